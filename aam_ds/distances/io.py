"""Distance-matrix files: unifrac's HDF5 layout, ``.npy`` + ID list, and square TSV.

- HDF5 (``.h5``/``.hdf5``): datasets ``order`` (sample IDs, variable-length bytes) and ``matrix``
  (float64 ``[N, N]``), plus ``format``/``version`` as written by ``ssu``, so our files load with
  ``unifrac.h5unifrac`` and ``ssu`` output loads here.
- ``.npy``: the matrix, with sample IDs one per line in ``<same name>.ids.txt`` beside it.
- TSV (any other suffix): scikit-bio's square layout, an empty corner cell, IDs as the header
  row and as the first column.
"""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np

from aam_ds.data.files import decode_text, delimiter_problem, read_input_bytes, read_input_text
from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_path, atomic_write_text

SSU_FORMAT, SSU_VERSION = b"BDSM", b"2020.12"
_HDF5_MAGIC, _NPY_MAGIC = b"\x89HDF\r\n\x1a\n", b"\x93NUMPY"
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")


def ids_path(npy_path: str | Path) -> Path:
    """Where the sample IDs of a ``.npy`` matrix live: ``F.npy`` (or ``F.npy.gz``) -> ``F.ids.txt``."""
    path = Path(npy_path)
    if path.suffix in _COMPRESSED_SUFFIXES:
        path = path.with_suffix("")
    return path.with_suffix(".ids.txt")


def write_distance_matrix(path: str | Path, ids: list[str], matrix: np.ndarray) -> None:
    """Write ``matrix [N, N]`` with sample ``ids`` atomically, in the format named by the suffix."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("format", data=[SSU_FORMAT])
            f.create_dataset("version", data=[SSU_VERSION])
            f.create_dataset("order", data=[i.encode("utf-8") for i in ids], dtype=h5py.special_dtype(vlen=bytes))
            f.create_dataset("matrix", data=np.asarray(matrix, dtype=np.float64))
    elif path.suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(matrix))
            atomic_write_text(ids_path(path), "".join(f"{i}\n" for i in ids))
    else:
        import pandas as pd  # only for TSV: pandas is a slow import

        frame = pd.DataFrame(np.asarray(matrix), index=ids, columns=ids)
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", float_format="%.17g")


def read_distance_matrix(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read ``(ids, matrix [N, N] float64)`` from any supported file and check it is a distance matrix.

    The format is recognised from the content (HDF5, ``.npy`` or text), also when the file is gzip /
    bzip2 / xz-compressed; a TSV may carry a byte-order mark, CRLF line endings and leading ``#``
    comment lines.

    Raises
    ------
    AamInputError
        Missing or unreadable file, a text file that is not tab-separated, differing row and column
        IDs, or a matrix that is not square, symmetric, finite, non-negative with a zero diagonal.
    """
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "distance matrix not found", "check data.distances (an .h5, .npy or .tsv file)")
    try:
        if h5py.is_hdf5(path):
            ids, matrix = _read_h5(path, path)
        else:
            raw = read_input_bytes(path)
            if raw.startswith(_HDF5_MAGIC):
                ids, matrix = _read_h5(io.BytesIO(raw), path)
            elif raw.startswith(_NPY_MAGIC):
                ids, matrix = _read_ids(path), np.load(io.BytesIO(raw)).astype(np.float64)
            else:
                ids, matrix = _read_tsv(decode_text(raw, str(path), "a square tab-separated distance matrix"), path)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, AamInputError):
            raise
        raise AamInputError(
            str(path), f"cannot be read as a distance matrix ({exc})", "give a unifrac .h5, .npy + .ids.txt or square TSV"
        ) from exc
    _check(path, ids, matrix)
    return ids, matrix


def _read_h5(file: Path | io.BytesIO, path: Path) -> tuple[list[str], np.ndarray]:
    with h5py.File(file, "r") as f:
        if "order" not in f or "matrix" not in f:
            raise AamInputError(
                str(path), "HDF5 file lacks the 'order' and 'matrix' datasets", "give a file written by unifrac/ssu or aam-ds distances"
            )
        ids = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in f["order"][:]]
        return ids, np.asarray(f["matrix"][:], dtype=np.float64)


def _read_ids(path: Path) -> list[str]:
    id_file = ids_path(path)
    if not id_file.is_file():
        raise AamInputError(
            str(path), f"has no sample-ID list {id_file.name} beside it", "write the sample IDs, one per line, to " + str(id_file)
        )
    return [line.strip() for line in read_input_text(id_file, "a list of sample IDs").split("\n") if line.strip()]


def _read_tsv(text: str, path: Path) -> tuple[list[str], np.ndarray]:
    import pandas as pd  # only for TSV: pandas is a slow import

    lines = text.split("\n")
    while lines and lines[0].startswith("#"):  # leading comment lines
        lines.pop(0)
    if lines and delimiter_problem(lines[0]):
        raise AamInputError(
            str(path), f"is {delimiter_problem(lines[0])}, not tab-separated (its header line has no tab)", "write it tab-separated"
        )
    frame = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t", index_col=0, dtype=str, keep_default_na=False)
    frame.index, frame.columns = frame.index.astype(str), frame.columns.astype(str)
    if list(frame.index) != list(frame.columns):
        raise AamInputError(str(path), "row and column IDs differ", "write a square matrix with the same IDs on both axes")
    return list(frame.index), frame.apply(pd.to_numeric).to_numpy(dtype=np.float64)


def _check(path: Path, ids: list[str], matrix: np.ndarray) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(ids):
        raise AamInputError(
            str(path), f"matrix of shape {matrix.shape} does not match its {len(ids)} IDs", "give a square N x N matrix with N IDs"
        )
    if len(set(ids)) != len(ids):
        raise AamInputError(str(path), "has duplicated sample IDs", "make the IDs unique")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise AamInputError(str(path), "has negative or non-finite distances", "recompute the matrix")
    scale = max(1.0, float(np.abs(matrix).max(initial=0)))
    if np.abs(matrix - matrix.T).max(initial=0) > 1e-6 * scale or np.abs(np.diag(matrix)).max(initial=0) > 1e-6 * scale:
        raise AamInputError(
            str(path), "is not symmetric with a zero diagonal", "give a distance matrix, not similarities or a non-square table"
        )
