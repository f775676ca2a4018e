"""Feature tables: BIOM v2.1 HDF5, BIOM v1 JSON, classic BIOM TSV and QIIME 2 .qza.

BIOM stores observations x samples; a :class:`FeatureTable` is samples x ASVs.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import biom
import biom.parse
import h5py
import numpy as np
import scipy.sparse as sp

from aam_ds.data.files import decode_text, delimiter_problem, read_input_bytes
from aam_ds.data.qiime2 import is_qza, read_qza
from aam_ds.errors import AamInputError, notice

# last TSV column holding per-ASV annotation rather than counts
_TSV_ANNOTATION_COLUMNS = {"taxonomy", "metadata", "consensus lineage", "consensuslineage"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class FeatureTable:
    """Read counts of ``N`` samples over ``M`` ASVs.

    ``counts`` is a CSR matrix ``[N, M]`` of float64 read counts (non-negative, finite);
    ``source`` is the file it came from (for error messages).
    """

    sample_ids: list[str]
    asv_ids: list[str]
    counts: sp.csr_matrix
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.counts.shape

    def take_samples(self, rows: np.ndarray | list[int]) -> "FeatureTable":
        """The table restricted to the given sample rows (in that order); ASVs unchanged."""
        rows = np.asarray(rows, dtype=np.int64)
        return FeatureTable([self.sample_ids[i] for i in rows], self.asv_ids, self.counts[rows].tocsr(), self.source)

    def drop_empty_asvs(self) -> "FeatureTable":
        """The table without ASVs that have no reads in any sample."""
        keep = np.flatnonzero(np.asarray(self.counts.sum(axis=0)).ravel() > 0)
        if len(keep) == len(self.asv_ids):
            return self
        return FeatureTable(self.sample_ids, [self.asv_ids[j] for j in keep], self.counts[:, keep].tocsr(), self.source)


def load_table(path: str | Path) -> FeatureTable:
    """Load a feature table (format detected from the content, not the suffix) and validate it.

    BIOM HDF5, BIOM JSON, classic BIOM TSV (any of them gzip / bzip2 / xz-compressed) or a .qza;
    text may carry a UTF-8 byte-order mark and CRLF line endings (:mod:`aam_ds.data.files`).
    """
    path = Path(path)
    refuse_sharded_folder(path, str(path))
    if not path.is_file():
        raise AamInputError(str(path), "feature table not found", "check data.table (a BIOM file or a .qza artifact)")
    if is_qza(path):
        payload = read_qza(path, "FeatureTable[Frequency]")
        table = _biom_from_hdf5(io.BytesIO(payload), f"{path} (data/feature-table.biom)")
        return _from_biom(table, str(path))
    if h5py.is_hdf5(path):
        return _from_biom(_biom_from_hdf5(path, str(path)), str(path))
    raw = read_input_bytes(path)
    if raw.startswith(_HDF5_MAGIC):  # a compressed BIOM HDF5
        return _from_biom(_biom_from_hdf5(io.BytesIO(raw), str(path)), str(path))
    text = decode_text(raw, str(path), "a BIOM table (HDF5, JSON or tab-separated)")
    if text.lstrip().startswith("{"):
        return _from_biom(_biom_from_json(text, path), str(path))
    return _from_tsv(text, path)


def refuse_sharded_folder(path: str | Path, source: str) -> None:
    """Refuse a sharded dataset folder (``aam-ds shard``) where a command reads a whole feature table in memory.

    Raises
    ------
    AamInputError
        ``path`` is a folder holding a ``manifest.json``, naming ``source`` (the flag or field that gave it) and the
        BIOM table the folder was built from (training's ``data.table`` and ``aam-ds distances`` read the folder itself).
    """
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return
    try:
        built_from = json.loads(manifest.read_text())["source"]["table"]
    except (OSError, ValueError, KeyError, TypeError):
        built_from = "the BIOM table it was built from"
    raise AamInputError(
        source,
        f"{path} is a sharded dataset folder (written by `aam-ds shard`), and this command reads a whole feature table in memory",
        f"pass {built_from}, the table it was built from; training (data.table: DIR) and `aam-ds distances --table DIR` "
        "read the folder itself",
    )


def without_empty_samples(table: FeatureTable, why: str = "nothing to learn from") -> FeatureTable:
    """The table without samples that have no reads, with a notice naming a few of them and the count.

    A sample without reads has nothing to learn or predict from (its embedding would be that of an
    empty set). ``why`` completes the notice. Every entry point that takes samples from a table
    calls this: training, evaluation, cross-validation and ``aam-ds predict`` through
    :func:`aam_ds.data.preprocess.preprocess_samples`, the baselines and the benchmark.

    Raises
    ------
    AamInputError
        No sample has reads.
    """
    has_reads = np.asarray(table.counts.sum(axis=1)).ravel() > 0
    if has_reads.all():
        return table
    if not has_reads.any():
        raise AamInputError(table.source, "no sample has reads", "give a table with counts")
    empty = [s for s, kept in zip(table.sample_ids, has_reads) if not kept]
    notice(f"{table.source}: {len(empty)} samples have no reads and are left out ({why}), e.g. {empty[:5]}")
    return table.take_samples(np.flatnonzero(has_reads)).drop_empty_asvs()


def validate_table(table: FeatureTable) -> FeatureTable:
    """Check IDs are unique and counts non-negative, finite and non-empty; return the table."""
    src = table.source
    for kind, ids in (("sample", table.sample_ids), ("ASV", table.asv_ids)):
        dups = [i for i, c in Counter(ids).items() if c > 1]
        if dups:
            raise AamInputError(src, f"duplicate {kind} IDs: {_preview(dups)}", f"make every {kind} ID unique (merge or rename them)")
    if table.counts.shape[0] == 0 or table.counts.shape[1] == 0:
        raise AamInputError(
            src, f"table is empty ({table.counts.shape[0]} samples x {table.counts.shape[1]} ASVs)", "give a table with counts"
        )
    coo = table.counts.tocoo()
    for bad, what, fix in (
        (~np.isfinite(coo.data), "non-finite counts (NaN/inf)", "counts must be finite numbers"),
        (coo.data < 0, "negative counts", "give raw read counts (not CLR / log-transformed values)"),
    ):
        if bad.any():
            names = [table.sample_ids[r] for r in np.unique(coo.row[bad])]
            raise AamInputError(src, f"{what} in samples {_preview(names)}", fix)
    if table.counts.sum() == 0:
        raise AamInputError(src, "every count is zero", "give a table with reads")
    return table


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


def _biom_error(source: str, exc: Exception) -> AamInputError:
    return AamInputError(
        source,
        f"cannot be read as a BIOM table ({type(exc).__name__}: {exc})",
        "the file is corrupt or not BIOM; re-export it (`biom convert --to-hdf5`) or re-download it",
    )


def _duplicate_error(source: str, exc: Exception) -> AamInputError:
    return AamInputError(source, f"BIOM rejects the table: {exc}", "make every sample and ASV ID unique")


def _biom_from_hdf5(file: str | Path | io.BytesIO, source: str) -> biom.Table:
    try:
        with h5py.File(file, "r") as handle:
            return biom.Table.from_hdf5(handle)
    except biom.exception.TableException as exc:
        raise _duplicate_error(source, exc) from exc
    except Exception as exc:  # h5py / biom raise OSError, KeyError, ValueError ... on corrupt files
        raise _biom_error(source, exc) from exc


def _biom_from_json(text: str, path: Path) -> biom.Table:
    try:
        return biom.parse.parse_biom_table(io.StringIO(text))
    except biom.exception.TableException as exc:
        raise _duplicate_error(str(path), exc) from exc
    except Exception as exc:
        raise _biom_error(str(path), exc) from exc


def _from_biom(table: biom.Table, source: str) -> FeatureTable:
    counts = sp.csr_matrix(table.matrix_data.T, dtype=np.float64)
    counts.sort_indices()
    return validate_table(
        FeatureTable(
            sample_ids=[str(i) for i in table.ids("sample")],
            asv_ids=[str(i) for i in table.ids("observation")],
            counts=counts,
            source=source,
        )
    )


def _from_tsv(text: str, path: Path) -> FeatureTable:
    """Parse a classic BIOM TSV ("#OTU ID" header, ASVs as rows, optional taxonomy column).

    The header is the last line starting with '#' before the first data line (or the first line
    when no line starts with '#'). Parsed here rather than by biom-format, which silently turns a
    last column with a non-numeric cell into observation metadata.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first_data = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
    header_at = first_data - 1 if first_data > 0 else 0
    rows = [ln.split("\t") for ln in lines[header_at + 1 :]] if lines else []
    if lines and rows and delimiter_problem(lines[header_at]):
        raise AamInputError(
            str(path),
            f"is {delimiter_problem(lines[header_at])}, not tab-separated (its header line has no tab)",
            "save the table tab-separated (`biom convert --to-tsv`), or convert it to BIOM HDF5",
        )
    if not lines or not rows or len(lines[header_at].split("\t")) < 2:
        raise AamInputError(
            str(path),
            "is not a BIOM table: no HDF5/JSON content and no tab-separated '#OTU ID' header with data rows",
            "the file may be corrupt; re-export it (`biom convert --to-hdf5` or `--to-tsv`) or re-download it",
        )
    header = lines[header_at].split("\t")
    sample_ids = [s.strip() for s in header[1:]]
    annotated = sample_ids[-1].lower() in _TSV_ANNOTATION_COLUMNS
    if annotated:
        sample_ids = sample_ids[:-1]
    n = len(sample_ids)
    asv_ids: list[str] = []
    values = np.zeros((len(rows), n), dtype=np.float64)
    for r, cells in enumerate(rows):
        cells = [c.strip() for c in cells]
        if len(cells) - 1 - annotated != n:
            raise AamInputError(
                str(path),
                f"row {header_at + r + 2} (ASV {cells[0]!r}) has {len(cells) - 1} values but the header names {n} samples",
                "every row needs one count per sample column (tab-separated)",
            )
        asv_ids.append(cells[0])
        try:
            values[r] = np.asarray(cells[1 : n + 1], dtype=np.float64)
        except ValueError:
            c = next(c for c in range(n) if not _is_number(cells[c + 1]))
            raise AamInputError(
                str(path),
                f"count {cells[c + 1]!r} for ASV {cells[0]!r} in sample {sample_ids[c]!r} is not a number",
                "counts must be numbers; a trailing annotation column must be named 'taxonomy'",
            ) from None
    return validate_table(FeatureTable(sample_ids, asv_ids, sp.csr_matrix(values.T), str(path)))
