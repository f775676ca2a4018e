"""A sharded on-disk dataset (written by ``aam-ds shard``, :mod:`aam_ds.data.shard_write`) read lazily.

A sample is read from its Arrow IPC shard when a batch asks for it, with positioned reads
(``os.pread``) at the byte offsets of the shard's columns, found once per shard by mapping the
file: nothing but the ASV tokens and a few numbers per shard is held, so memory does not grow with
the number of samples. (Reading through a memory mapping instead leaves every page a read touches
in the process's resident set, large folios of the page cache included: ~600 MiB after 100
batches of a 1M-sample folder.) Samples are addressed by their global index (shard order, then
row order), the ``sample_index`` of the in-memory path, so the seeded global permutation of
:class:`aam_ds.engine.batches.GlobalBatchSampler` splits them across ranks and DataLoader workers,
and resumes mid-epoch, exactly as it does in memory.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from aam_ds.data.select import SampleRow
from aam_ds.data.shard_write import ASVS, MANIFEST, SHARD_FORMAT, sha256_of, spec_fields
from aam_ds.data.table import FeatureTable
from aam_ds.errors import AamInputError
from aam_ds.spec import DataSpec

RESHARD = "rebuild it into a new folder with `aam-ds shard --table T --tree P --spec <this run's spec> --out NEW_DIR`"
COLUMNS = {"sample_id": np.uint8, "asv_index": np.int32, "counts": np.float64, "kept": np.int32}  # value types
BLOCK = 16384  # rows per read when a whole shard is scanned


def column_positions(path: Path) -> dict[str, tuple[int, int]]:
    """Byte positions in the Arrow IPC file ``path`` of each column's ``int32`` offsets and of its values."""
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    base = pa.py_buffer(mapped)
    batch = pa.ipc.open_file(pa.BufferReader(base)).get_batch(0)
    positions = {}
    for name, dtype in COLUMNS.items():
        column = batch.column(name)
        offsets, values = column.buffers()[1], column.buffers()[-1]
        child = 0 if name == "sample_id" else column.values.offset * np.dtype(dtype).itemsize
        positions[name] = (offsets.address - base.address + 4 * column.offset, values.address - base.address + child)
    return positions


class Shards:
    """The shards of a folder: per-sample rows read from the Arrow files with positioned reads.

    Picklable (DataLoader workers): only the folder and its manifest travel; each process opens the files itself.
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        counts = [s["samples"] for s in manifest["shards"]]
        self.starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._open: dict[int, tuple[int, dict[str, tuple[int, int]]]] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["manifest"])

    def _file(self, k: int) -> tuple[int, dict[str, tuple[int, int]]]:
        """Shard ``k``'s open file descriptor and :func:`column_positions`."""
        if k not in self._open:
            path = self.folder / self.manifest["shards"][k]["file"]
            self._open[k] = (os.open(path, os.O_RDONLY), column_positions(path))
        return self._open[k]

    def _read(self, k: int, name: str, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``first:last`` of shard ``k``'s column ``name``: its offsets ``[last - first + 1]`` and values."""
        fd, positions = self._file(k)
        offsets_at, values_at = positions[name]
        offsets = np.frombuffer(os.pread(fd, 4 * (last - first + 1), offsets_at + 4 * first), dtype=np.int32).astype(np.int64)
        dtype = np.dtype(COLUMNS[name])
        size = dtype.itemsize * int(offsets[-1] - offsets[0])
        values = (
            np.frombuffer(os.pread(fd, size, values_at + dtype.itemsize * int(offsets[0])), dtype=dtype) if size else np.zeros(0, dtype)
        )
        return offsets - offsets[0], values

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return k, i - int(self.starts[k])

    def full_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``'s ASV columns ``int64 [k]`` and reads ``float64 [k]`` (all of its ASVs, for distances)."""
        k, r = self._locate(i)
        return self._read(k, "asv_index", r, r + 1)[1].astype(np.int64), self._read(k, "counts", r, r + 1)[1].copy()

    def row(self, i: int) -> SampleRow:
        """Sample ``i``'s :class:`SampleRow`: the ASVs the model reads (at most ``max_asvs``) and their reads (``float32``)."""
        k, r = self._locate(i)
        index, counts = self._read(k, "asv_index", r, r + 1)[1], self._read(k, "counts", r, r + 1)[1]
        positions = self._read(k, "kept", r, r + 1)[1]
        if len(positions) == 0:  # every present ASV
            positions = np.flatnonzero(counts > 0)
        return SampleRow(i, index[positions].astype(np.int64), counts[positions].astype(np.float32))

    def present_asvs(self, samples: np.ndarray, n_asvs: int) -> np.ndarray:
        """Boolean ``[n_asvs]``: the ASVs the model reads in any of ``samples`` (global indices), :data:`BLOCK` rows at a time."""
        seen, wanted = np.zeros(n_asvs, dtype=bool), np.zeros(len(self), dtype=bool)
        wanted[samples] = True
        for k in range(len(self.starts) - 1):
            n = int(self.starts[k + 1] - self.starts[k])
            for first in range(0, n, BLOCK):
                last = min(first + BLOCK, n)
                rows = wanted[self.starts[k] + first : self.starts[k] + last]
                offsets, index = self._read(k, "asv_index", first, last)
                counts = self._read(k, "counts", first, last)[1]
                kept_offsets, kept = self._read(k, "kept", first, last)
                picks = np.diff(kept_offsets) > 0  # rows whose kept ASVs are listed; the others keep every present one
                entry_row = np.repeat(np.arange(len(rows)), np.diff(offsets))
                seen[index[rows[entry_row] & ~picks[entry_row] & (counts > 0)]] = True
                kept_row = np.repeat(np.arange(len(rows)), np.diff(kept_offsets))
                chosen = rows[kept_row]
                seen[index[offsets[kept_row[chosen]] + kept[chosen]]] = True
        return seen

    def sample_id(self, i: int) -> str:
        """Sample ``i``'s ID."""
        k, r = self._locate(i)
        return self._read(k, "sample_id", r, r + 1)[1].tobytes().decode("utf-8")


class ShardRows(Sequence):
    """The :class:`SampleRow` of every sample, read on access (a ``Sequence[SampleRow]``)."""

    def __init__(self, shards: Shards):
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> SampleRow:
        return self.shards.row(int(i))


class ShardSampleIds(Sequence):
    """The sample IDs in global order, read on access (a ``Sequence[str]``)."""

    def __init__(self, shards: Shards):
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> str:
        return self.shards.sample_id(int(i))


class ShardedTable:
    """The preprocessed feature table of a sharded dataset, as far as training needs it without loading it:
    ``sample_ids`` (lazy), ``asv_ids``, ``shape``, ``source`` and :meth:`take_samples`."""

    def __init__(self, shards: Shards, asv_ids: list[str]):
        self.shards, self.asv_ids = shards, asv_ids
        self.sample_ids = ShardSampleIds(shards)
        self.source = str(shards.folder)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.shards), len(self.asv_ids)

    def take_samples(self, rows: np.ndarray | list[int]) -> FeatureTable:
        """The given samples (in that order) over all ASVs as an in-memory :class:`FeatureTable` (a batch's distances)."""
        parts = [self.shards.full_row(int(i)) for i in rows]
        indptr = np.concatenate(([0], np.cumsum([len(c) for c, _ in parts])))
        counts = sp.csr_matrix(
            (np.concatenate([v for _, v in parts]), np.concatenate([c for c, _ in parts]), indptr), shape=(len(parts), len(self.asv_ids))
        )
        return FeatureTable([self.sample_ids[int(i)] for i in rows], self.asv_ids, counts, self.source)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a sharded dataset folder (AamInputError when it is missing, unreadable or of another format)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise AamInputError(str(path), "is missing: the folder is not a finished sharded dataset", RESHARD)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AamInputError(str(path), f"cannot be read ({exc})", RESHARD) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != SHARD_FORMAT:
        raise AamInputError(str(path), f"is not a sharded dataset manifest of format {SHARD_FORMAT}", RESHARD)
    return manifest


def open_shards(folder: str | Path, data: DataSpec) -> tuple[ShardedTable, np.ndarray, Path | None]:
    """Open the sharded dataset ``folder`` for a run with data settings ``data``.

    Returns the table, the ASV tokens ``uint8 [M, max_seq_len]`` and the folder's tree (None without one).
    Every file's SHA-256 is checked against the manifest.

    Raises
    ------
    AamInputError
        A missing or unreadable manifest, a file missing or not matching its hash, or data settings
        (:func:`aam_ds.data.shard_write.spec_fields`) other than those the folder was built with.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    want = json.loads(json.dumps(spec_fields(data)))
    if manifest["spec"] != want:
        differ = sorted(k for k in set(want) | set(manifest["spec"]) if want.get(k) != manifest["spec"].get(k))
        built = {k: manifest["spec"].get(k) for k in differ}
        raise AamInputError(
            str(folder / MANIFEST),
            f"was built with {built}, the run asks for { ({k: want.get(k) for k in differ}) }",
            f"set those data fields as built (--set data.<field>=...), or {RESHARD}",
        )
    files = {s["file"]: s["sha256"] for s in manifest["shards"]} | manifest["files"]
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise AamInputError(str(path), "is missing from the sharded dataset", RESHARD)
        if sha256_of(path) != digest:
            raise AamInputError(str(path), "does not match the SHA-256 in its manifest (changed or damaged)", RESHARD)
    asvs = pa.ipc.open_file(pa.memory_map(str(folder / ASVS), "r")).read_all()
    column = asvs.column("tokens").combine_chunks()
    tokens = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=len(column) * data.max_seq_len).reshape(len(column), -1).copy()
    asv_ids = asvs.column("asv_id").to_pylist()
    tree = next((folder / name for name in manifest["files"] if name.startswith("tree")), None)
    return ShardedTable(Shards(folder, manifest), asv_ids), tokens, tree


def read_sharded_table(folder: str | Path) -> tuple[FeatureTable, Path | None, dict]:
    """Every sample of the sharded dataset ``folder`` in memory, with its preprocessed reads over all the folder's ASVs
    (what distances compare; ``aam-ds distances --table DIR``), read and checked by :func:`open_shards` with the data
    settings the folder was built with.

    Returns the table (``N`` samples x ``M`` ASVs, float64 reads), the folder's tree (None without one) and the data
    settings it was built with (:func:`aam_ds.data.shard_write.spec_fields`).

    Raises
    ------
    AamInputError
        as :func:`open_shards`: a missing or unreadable manifest, a file missing or not matching its hash.
    """
    built = read_manifest(folder)["spec"]
    fields = {k: v for k, v in built.items() if "." not in k}
    data = DataSpec.model_validate({**fields, "split": {"seed": built.get("split.seed", 0)}})
    table, _, tree = open_shards(folder, data)
    return table.take_samples(np.arange(table.shape[0])), tree, built
