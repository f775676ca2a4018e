"""``aam-ds shard``: a BIOM HDF5 table -> a sharded on-disk dataset that training reads lazily (``data.table: DIR``).

The table is read by sample slices (:class:`aam_ds.data.biom_slices.BiomSlices`) and preprocessed
as :func:`aam_ds.data.preprocess.preprocess_samples` does in memory, sample by sample: samples
without reads dropped -> rarefaction (the same seeded draws, in table order) -> samples without a
metadata row (with ``--metadata``) -> ASVs the ambiguity policy rejects -> per-sample ASV selection.
Two passes over the file: the first finds the ASVs left with reads (the table's columns after
preprocessing), the second writes the rows. Memory is bounded by one shard, the ASV table and
``indptr``. Layout of ``DIR`` (:mod:`aam_ds.data.shards` reads it):

- ``shard-00000.arrow`` ...: Arrow IPC files, one record batch each, a row per sample:
  ``sample_id`` string, ``asv_index`` list<int32> (columns of ``asvs.arrow``, ascending),
  ``counts`` list<float64> (the preprocessed reads, all of the sample's ASVs: what distances use),
  ``kept`` list<int32> (positions into the row of the ASVs the model reads; empty = all)
- ``asvs.arrow``: ``asv_id`` string, ``tokens`` fixed_size_binary[max_seq_len] (``uint8`` tokens)
- ``tree.<suffix>``: a copy of ``--tree`` (on-the-fly UniFrac needs it)
- ``manifest.json``: format, spec fields the rows depend on, per-shard sample counts, SHA-256 of
  every file, samples and ASVs loaded and dropped (why), the source files; written last.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from aam_ds.data.biom_slices import BiomSlices
from aam_ds.data.metadata import load_metadata
from aam_ds.data.rarefy import rarefied_rows
from aam_ds.data.select import selected_positions
from aam_ds.data.sequences import asv_sequences, dropped_rows, tokenize
from aam_ds.errors import AamInputError, notice
from aam_ds.io_utils import atomic_write_json
from aam_ds.spec import DataSpec

SHARD_FORMAT = 1
MANIFEST = "manifest.json"
ASVS = "asvs.arrow"
SLICE = 4096  # samples read from the HDF5 file at a time
ROW_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("asv_index", pa.list_(pa.int32())), ("counts", pa.list_(pa.float64())), ("kept", pa.list_(pa.int32()))]
)


def spec_fields(data: DataSpec) -> dict:
    """The data-section fields a sharded dataset's rows depend on (recorded in, and checked against, its manifest)."""
    fields = {k: getattr(data, k) for k in ("rarefy_depth", "rarefy_seed", "max_asvs", "asv_selection", "max_seq_len", "ambiguous_bases")}
    fields["drop_samples_without_metadata"] = data.drop_samples_without_metadata
    if data.asv_selection == "random":
        fields["split.seed"] = data.split.seed  # the random ASV selection's seed
    return fields


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_shards(
    table: str | Path,
    out: str | Path,
    data: DataSpec,
    tree: str | Path | None = None,
    metadata: str | Path | None = None,
    sequences: str | Path | None = None,
    samples_per_shard: int = 65536,
    check_asvs: Callable[[list[str]], object] | None = None,
) -> dict:
    """Convert the BIOM HDF5 ``table`` into the sharded dataset ``out`` (layout in the module docstring); returns the manifest.

    ``data``: the preprocessing settings (rarefaction, ASV selection, ``max_seq_len``, ambiguity policy).
    ``check_asvs``: called with the IDs of the ASVs kept, before any shard is written; it raises to
    refuse them (``aam-ds shard`` checks that they are tips of ``tree``, so that a tree that does not
    fit fails here, not when training starts).

    Raises
    ------
    AamInputError
        ``out`` exists and is not empty; the table, sequences or metadata cannot be read; no sample is left.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AamInputError(str(out), "exists and is not empty", "choose a new --out folder or remove this one")
    out.mkdir(parents=True, exist_ok=True)
    keep_ids = None if metadata is None else set(load_metadata(metadata).index)
    with BiomSlices(table) as biom:
        seqs = asv_sequences(biom.asv_ids, sequences, biom.source)
        tokens = tokenize(seqs, data.max_seq_len, data.ambiguous_bases, ids=biom.asv_ids, source=str(sequences or biom.source))
        rejected = dropped_rows(tokens)
        if rejected.any():
            notice(f"{biom.source}: dropping {rejected.sum()} ASVs with ambiguous bases (data.ambiguous_bases=drop_asv)")
        drops: dict[str, int] = {}
        used, read = np.zeros(len(biom.asv_ids), dtype=bool), np.zeros(len(biom.asv_ids), dtype=bool)
        for _, counts in _preprocessed(biom, data, keep_ids, rejected, drops, read):
            used[counts.indices] = True
        if not used.any():
            raise AamInputError(
                biom.source, "no sample is left after preprocessing", f"check the table and the settings {spec_fields(data)}"
            )
        columns = used if (drops or data.rarefy_depth is not None) else ~rejected  # what preprocess_samples keeps
        if check_asvs is not None:
            check_asvs([a for a, keep in zip(biom.asv_ids, columns) if keep])
        shards = _write_rows(biom, data, keep_ids, rejected, columns, out, samples_per_shard)
        asv_ids = [a for a, keep in zip(biom.asv_ids, columns) if keep]
        _write_asvs(out / ASVS, asv_ids, tokens[columns])
        files = {ASVS: sha256_of(out / ASVS)}
        if tree is not None:
            name = "tree" + "".join(Path(tree).suffixes[-2:])
            shutil.copyfile(tree, out / name)
            files[name] = sha256_of(out / name)
        manifest = {
            "format": SHARD_FORMAT,
            "spec": spec_fields(data),
            "samples": sum(s["samples"] for s in shards),
            "samples_loaded": biom.n_samples,
            "drops": drops,
            "asvs": len(asv_ids),
            "asvs_loaded": len(biom.asv_ids),
            "asv_drops": asv_drops(rejected, read, columns),
            "shards": shards,
            "files": files,
            "source": {"table": str(table), "tree": str(tree) if tree else None, "metadata": str(metadata) if metadata else None},
        }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def asv_drops(rejected: np.ndarray, read: np.ndarray, kept: np.ndarray) -> dict[str, int]:
    """Reason -> ASVs of the table left out of the folder, from boolean ``[M]`` masks of the table's ASVs: ``rejected`` by
    the ambiguity policy, with reads in the table (``read``), ``kept``."""
    reasons = {
        "ambiguous bases, data.ambiguous_bases=drop_asv": rejected,
        "no reads in the table": ~read & ~rejected & ~kept,
        "no reads left in the kept samples after rarefaction and the sample drops": read & ~rejected & ~kept,
    }
    return {why: int(mask.sum()) for why, mask in reasons.items() if mask.any()}


def _preprocessed(
    biom: BiomSlices,
    data: DataSpec,
    keep_ids: set[str] | None,
    rejected: np.ndarray,
    drops: dict[str, int],
    read: np.ndarray | None = None,
) -> Iterator[tuple[list[str], sp.csr_matrix]]:
    """The kept samples of each slice and their reads ``[b, M]`` (original columns), counting drops per reason;
    ``read`` (boolean ``[M]``), when given, marks the ASVs with reads in the table as read."""
    rng = np.random.default_rng(data.rarefy_seed)

    def drop(reason: str, keep: np.ndarray, ids: list[str], counts: sp.csr_matrix) -> tuple[list[str], sp.csr_matrix]:
        if not keep.all():
            drops[reason] = drops.get(reason, 0) + int((~keep).sum())
        return [i for i, k in zip(ids, keep) if k], counts[np.flatnonzero(keep)]

    for ids, counts in biom.slices(SLICE):
        if read is not None:
            read[counts.indices[counts.data > 0]] = True
        ids, counts = drop("no reads", np.asarray(counts.sum(axis=1)).ravel() > 0, ids, counts)
        if data.rarefy_depth is not None:
            ids, counts = drop(
                f"fewer reads than data.rarefy_depth {data.rarefy_depth}",
                np.asarray(counts.sum(axis=1)).ravel() >= data.rarefy_depth,
                ids,
                counts,
            )
            counts = _rarefied(counts, data.rarefy_depth, rng, biom.source)
        if keep_ids is not None:
            has_row = np.array([i in keep_ids for i in ids], dtype=bool)
            if not has_row.all() and not data.drop_samples_without_metadata:
                raise AamInputError(
                    f"{biom.source}",
                    f"samples without a metadata row, e.g. {[i for i, k in zip(ids, has_row) if not k][:5]}",
                    "add rows for them, or set data.drop_samples_without_metadata=true (--set) to leave them out",
                )
            ids, counts = drop("no metadata", has_row, ids, counts)
        if rejected.any():
            counts = _without_columns(counts, rejected)
            ids, counts = drop("no reads left without ASVs with ambiguous bases", np.asarray(counts.sum(axis=1)).ravel() > 0, ids, counts)
        yield ids, counts


def _without_columns(counts: sp.csr_matrix, rejected: np.ndarray) -> sp.csr_matrix:
    """``counts`` without the stored entries of the ``rejected`` columns (the others as stored, numbering unchanged)."""
    keep = ~rejected[counts.indices]
    row = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    indptr = np.concatenate(([0], np.cumsum(np.bincount(row[keep], minlength=counts.shape[0]))))
    return sp.csr_matrix((counts.data[keep], counts.indices[keep], indptr), shape=counts.shape)


def _rarefied(counts: sp.csr_matrix, depth: int, rng: np.random.Generator, source: str) -> sp.csr_matrix:
    """Each row drawn down to ``depth`` reads without replacement, as :func:`aam_ds.data.rarefy.rarefy` draws them."""
    if not np.array_equal(counts.data, np.round(counts.data)):
        raise AamInputError(source, "rarefaction needs integer read counts but the table has fractional values", "unset data.rarefy_depth")
    return rarefied_rows(counts, range(counts.shape[0]), depth, rng)


def _write_rows(
    biom: BiomSlices, data: DataSpec, keep_ids: set[str] | None, rejected: np.ndarray, columns: np.ndarray, out: Path, per_shard: int
) -> list[dict]:
    """Second pass: the rows in the kept columns' numbering, ``per_shard`` samples per Arrow file; the shards' manifest entries."""
    new_column = np.cumsum(columns) - 1
    rng = np.random.default_rng(data.split.seed)
    shards: list[dict] = []
    pending: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for ids, counts in _preprocessed(biom, data, keep_ids, rejected, {}):
        for r, sample in enumerate(ids):
            start, end = counts.indptr[r], counts.indptr[r + 1]
            cols, vals = new_column[counts.indices[start:end]], counts.data[start:end]
            kept = selected_positions(cols, vals, data.max_asvs, data.asv_selection, rng)
            pending.append((sample, cols, vals, kept if len(kept) < len(cols) else kept[:0]))
            if len(pending) == per_shard:
                shards.append(_write_shard(out, len(shards), pending))
                pending = []
    if pending:
        shards.append(_write_shard(out, len(shards), pending))
    return shards


def _write_shard(out: Path, number: int, rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """One Arrow IPC file of ``rows`` (sample ID, ASV columns, counts, kept positions); its manifest entry."""

    def lists(arrays: list[np.ndarray], dtype: pa.DataType) -> pa.ListArray:
        offsets = np.concatenate(([0], np.cumsum([len(a) for a in arrays]))).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(arrays), type=dtype))

    batch = pa.record_batch(
        [
            pa.array([r[0] for r in rows], type=pa.string()),
            lists([r[1] for r in rows], pa.int32()),
            lists([r[2] for r in rows], pa.float64()),
            lists([r[3] for r in rows], pa.int32()),
        ],
        schema=ROW_SCHEMA,
    )
    path = out / f"shard-{number:05d}.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, ROW_SCHEMA) as writer:
        writer.write_batch(batch)
    return {"file": path.name, "samples": len(rows), "sha256": sha256_of(path)}


def _write_asvs(path: Path, asv_ids: list[str], tokens: np.ndarray) -> None:
    """``asvs.arrow``: ASV IDs and their ``uint8 [M, L]`` tokens as fixed-size binary values."""
    width = tokens.shape[1]
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(asv_ids), [None, pa.py_buffer(np.ascontiguousarray(tokens))])
    table = pa.table({"asv_id": pa.array(asv_ids, type=pa.string()), "tokens": column})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def describe(manifest: dict, out: Path) -> str:
    """One line on what ``aam-ds shard`` wrote."""
    dropped = "".join(f", {n} dropped ({why})" for why, n in manifest["drops"].items())
    asvs = "".join(f", {n} dropped ({why})" for why, n in manifest.get("asv_drops", {}).items())
    loaded = f" ({manifest['asvs_loaded']} in the table{asvs})" if "asvs_loaded" in manifest else ""
    return f"{manifest['samples']} samples ({manifest['samples_loaded']} loaded{dropped}), {manifest['asvs']} ASVs{loaded}, " + (
        f"{len(manifest['shards'])} shards -> {out}"
    )
