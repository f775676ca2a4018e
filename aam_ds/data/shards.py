"""A sharded on-disk dataset (written by ``aam-ds shard``, :mod:`aam_ds.data.shard_write`) read lazily.

The Arrow IPC shards are memory-mapped: a sample is read when a batch asks for it, so memory does
not grow with the number of samples (the ASV tokens and one ``int64`` per shard are held). Samples
are addressed by their global index (shard order, then row order), the ``sample_index`` of the
in-memory path, so the seeded global permutation of :class:`aam_ds.engine.batches.GlobalBatchSampler`
splits them across ranks and DataLoader workers, and resumes mid-epoch, exactly as it does in memory.
"""

from __future__ import annotations

import json
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

RESHARD = "rebuild it with `aam-ds shard --table T --out DIR` (and the run's data settings)"


class Shards:
    """The shards of a folder: per-sample rows read from memory-mapped Arrow files.

    Picklable (DataLoader workers): only the folder and its manifest travel, each process maps the files itself.
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        counts = [s["samples"] for s in manifest["shards"]]
        self.starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._open: dict[int, dict] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["manifest"])

    def _shard(self, k: int) -> dict:
        """Shard ``k``'s columns: sample IDs (Arrow) and zero-copy numpy views of the list offsets and values."""
        if k not in self._open:
            batch = pa.ipc.open_file(pa.memory_map(str(self.folder / self.manifest["shards"][k]["file"]), "r")).get_batch(0)
            views = {"sample_id": batch.column("sample_id")}
            for name in ("asv_index", "counts", "kept"):
                column = batch.column(name)
                views[name] = (column.offsets.to_numpy(), column.values.to_numpy(zero_copy_only=True))
            self._open[k] = views
        return self._open[k]

    def _locate(self, i: int) -> tuple[dict, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return self._shard(k), i - int(self.starts[k])

    def full_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``'s ASV columns ``int64 [k]`` and reads ``float64 [k]`` (all of its ASVs, for distances)."""
        shard, r = self._locate(i)
        (offsets, index), (_, counts) = shard["asv_index"], shard["counts"]
        lo, hi = offsets[r], offsets[r + 1]
        return index[lo:hi].astype(np.int64), counts[lo:hi].copy()

    def row(self, i: int) -> SampleRow:
        """Sample ``i``'s :class:`SampleRow`: the ASVs the model reads (at most ``max_asvs``) and their reads (``float32``)."""
        shard, r = self._locate(i)
        (offsets, index), (_, counts), (kept_offsets, kept) = shard["asv_index"], shard["counts"], shard["kept"]
        lo, hi = offsets[r], offsets[r + 1]
        positions = kept[kept_offsets[r] : kept_offsets[r + 1]]
        if len(positions) == 0:
            positions = np.flatnonzero(counts[lo:hi] > 0)
        return SampleRow(i, index[lo:hi][positions].astype(np.int64), counts[lo:hi][positions].astype(np.float32))

    def sample_id(self, i: int) -> str:
        shard, r = self._locate(i)
        return shard["sample_id"][r].as_py()


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
