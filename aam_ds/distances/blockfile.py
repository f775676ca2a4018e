"""A full distance matrix written to disk block by block, in unifrac's HDF5 layout, resumable after a kill.

The matrix goes to ``F.h5.partial`` beside ``--out F.h5``: the ``order`` and ``format``/``version``
datasets of the unifrac layout, ``matrix`` (float64 ``[N, N]``, contiguous, allocated when the file
is created) and ``blocks_done`` (uint8, one flag per upper-triangle block). Each block and its mirror
are written, the file is flushed, then the block's flag is set and the file flushed again, so after a
kill at any moment every flagged block is on disk and writing a block never changes the file's
metadata. A rerun with the same inputs (the ``fingerprint`` attribute) computes only the unflagged
blocks; when all are done the file is renamed onto ``F.h5``. Memory is the block (``2 x block_size``
densified samples) plus the metric's sparse per-sample vectors, never ``N x N``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import h5py
import numpy as np

from aam_ds.distances.full import AnyMetric, block_pairs, block_progress, pair_block
from aam_ds.distances.io import SSU_FORMAT, SSU_VERSION
from aam_ds.errors import notice

# test hook: the process SIGKILLs itself once this many blocks are recorded in this run (a real kill, deterministic)
KILL_AFTER_BLOCKS_ENV = "AAM_DS_KILL_AFTER_BLOCKS"


def partial_path(path: str | Path) -> Path:
    """Where the unfinished matrix of ``--out F.h5`` lives: ``F.h5.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def write_blockwise_h5(
    metric: AnyMetric,
    path: str | Path,
    fingerprint: str,
    block_size: int = 1024,
    progress: bool = True,
) -> tuple[int, int]:
    """Write all pairwise distances of ``metric`` to the unifrac HDF5 file ``path``, block by block.

    Parameters
    ----------
    metric : PairwiseMetric or CpuMetric
        The metric bound to the table (and tree); ``N`` samples.
    path : str or Path
        The finished file (``.h5``); the work in progress is ``partial_path(path)``.
    fingerprint : str
        Identifies the inputs (table, tree, metric, parameters, precision); a partial file with another
        fingerprint or block size is started over (with a notice), never mixed in.
    block_size : int
        Samples per block: memory grows with it, not with ``N``.
    progress : bool
        Show a Rich progress bar with the elapsed time and ETA.

    Returns
    -------
    (done_before, total) : tuple of int
        Blocks found finished in a partial file from an earlier run, and the number of blocks.
    """
    n = len(metric.sample_ids)
    pairs = block_pairs(n, block_size)
    tmp = partial_path(path)
    with _open_partial(tmp, metric.sample_ids, fingerprint, block_size, len(pairs)) as f:
        done = f["blocks_done"][:].astype(bool)
        done_before = int(done.sum())
        kill_after, written = int(os.environ.get(KILL_AFTER_BLOCKS_ENV, "0")), 0
        with block_progress(metric.name, progress) as bar:
            task = bar.add_task("blocks", total=len(pairs), completed=done_before)
            for k in np.flatnonzero(~done).tolist():
                i, j = pairs[k]
                block = pair_block(metric, i, j, block_size)
                f["matrix"][i : i + len(block), j : j + block.shape[1]] = block
                if i != j:
                    f["matrix"][j : j + block.shape[1], i : i + len(block)] = block.T
                f.flush()
                f["blocks_done"][k] = 1
                f.flush()
                bar.advance(task)
                written += 1
                if written == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return done_before, len(pairs)


def _open_partial(tmp: Path, ids: list[str], fingerprint: str, block_size: int, n_blocks: int) -> h5py.File:
    """The partial file to continue, or a new one (an unreadable or foreign partial file is started over)."""
    if tmp.is_file():
        try:
            f = h5py.File(tmp, "r+")
            same = (
                f.attrs.get("fingerprint") == fingerprint
                and int(f.attrs.get("block_size", -1)) == block_size
                and f["blocks_done"].shape == (n_blocks,)
                and f["matrix"].shape == (len(ids), len(ids))
            )
            if same:
                return f
            f.close()
            notice(f"{tmp} was started with other inputs or another block size: starting over")
        except (OSError, KeyError) as exc:
            notice(f"{tmp} cannot be continued ({exc}): starting over")
    return _create_partial(tmp, ids, fingerprint, block_size, n_blocks)


def _create_partial(tmp: Path, ids: list[str], fingerprint: str, block_size: int, n_blocks: int) -> h5py.File:
    """A new partial file whose datasets are all allocated now (contiguous), so writing blocks changes no metadata."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(tmp, "w")
    f.attrs["fingerprint"], f.attrs["block_size"] = fingerprint, block_size
    f.create_dataset("format", data=[SSU_FORMAT])
    f.create_dataset("version", data=[SSU_VERSION])
    f.create_dataset("order", data=[i.encode("utf-8") for i in ids], dtype=h5py.special_dtype(vlen=bytes))
    for name, shape, dtype in (("matrix", (len(ids), len(ids)), np.float64), ("blocks_done", (n_blocks,), np.uint8)):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every block is written; no N x N pass of zeros
        f.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)
    f["blocks_done"][:] = 0
    f.flush()
    return f
