"""A BIOM v2.1 HDF5 table read by sample slices (its ``sample/matrix`` CSR, through ``indptr``), never whole.

Used by ``aam-ds shard`` (:mod:`aam_ds.data.shard_write`) for tables larger than memory; training
in memory reads tables with :func:`aam_ds.data.table.load_table`.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import scipy.sparse as sp

from aam_ds.data.qiime2 import is_qza, read_qza
from aam_ds.errors import AamInputError

_DATASETS = ("sample/ids", "observation/ids", "sample/matrix/indptr", "sample/matrix/indices", "sample/matrix/data")


class BiomSlices:
    """Sample ids, ASV ids and sample slices ``[b, M]`` of a BIOM HDF5 file (or the one in a .qza).

    ``asv_ids`` (``M`` strings) and ``indptr`` (``int64 [N + 1]``) are held in memory; counts are read
    one slice at a time (a .qza's BIOM file is first read into memory whole, as a zip member cannot be
    sliced in place: give the .biom itself for a table larger than memory). Use as a context manager.

    Raises
    ------
    AamInputError
        The file is missing, not BIOM HDF5 (JSON / TSV tables: convert them with
        ``biom convert --to-hdf5``), lacks a dataset of the layout, or holds duplicate ASV IDs.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.source = str(path)
        if not path.is_file():
            raise AamInputError(self.source, "feature table not found", "check --table (a BIOM HDF5 file or a .qza)")
        file = io.BytesIO(read_qza(path, "FeatureTable[Frequency]")) if is_qza(path) else path
        if not h5py.is_hdf5(file):
            raise AamInputError(self.source, "is not a BIOM HDF5 table", "convert it first: `biom convert -i T -o T.biom --to-hdf5`")
        self._h5 = h5py.File(file, "r")
        absent = [name for name in _DATASETS if name not in self._h5]
        if absent:
            self._h5.close()
            raise AamInputError(self.source, f"lacks the BIOM v2.1 datasets {absent}", "re-export it (`biom convert --to-hdf5`)")
        self.asv_ids = [_text(i) for i in self._h5["observation/ids"][:]]
        dups = [a for a, n in Counter(self.asv_ids).items() if n > 1]
        if dups:
            raise AamInputError(self.source, f"duplicate ASV IDs: {dups[:5]}", "make every ASV ID unique (merge or rename them)")
        self.indptr = self._h5["sample/matrix/indptr"][:].astype(np.int64)
        self.n_samples = len(self.indptr) - 1

    def __enter__(self) -> "BiomSlices":
        return self

    def __exit__(self, *exc) -> None:
        self._h5.close()

    def slices(self, size: int) -> Iterator[tuple[list[str], sp.csr_matrix]]:
        """``(sample ids, counts CSR [b, M] float64 with sorted indices)`` for consecutive slices of ``size`` samples.

        Raises AamInputError on negative or non-finite counts, naming the samples."""
        h5 = self._h5
        for start in range(0, self.n_samples, size):
            end = min(start + size, self.n_samples)
            lo, hi = self.indptr[start], self.indptr[end]
            ids = [_text(i) for i in h5["sample/ids"][start:end]]
            data = h5["sample/matrix/data"][lo:hi].astype(np.float64)
            indices = h5["sample/matrix/indices"][lo:hi].astype(np.int64)
            counts = sp.csr_matrix((data, indices, self.indptr[start : end + 1] - lo), shape=(end - start, len(self.asv_ids)))
            counts.sort_indices()
            bad = ~np.isfinite(data) | (data < 0)
            if bad.any():
                rows = np.unique(np.searchsorted(counts.indptr, np.flatnonzero(bad), side="right") - 1)
                raise AamInputError(
                    self.source,
                    f"negative or non-finite counts in samples {[ids[r] for r in rows[:5]]}",
                    "give raw read counts (not CLR / log-transformed values)",
                )
            yield ids, counts


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
