"""Reference distances from biocore's unifrac (Debian python3-unifrac), run by /usr/bin/python3.

    unifrac_oracle.py compute TABLE.biom TREE.nwk METRIC ALPHA OUT.npz [IDS.txt]   -> ids + fp64 matrix
                      (with IDS.txt: only those samples, one ID per line)
    unifrac_oracle.py read-h5 FILE.h5 OUT.npz   -> the matrix as unifrac.h5unifrac reads it

Kept free of aam_ds imports: it runs outside the project's virtual environment.
"""

import sys
import tempfile

import biom
import h5py
import numpy as np
import unifrac


def subset(table_path, ids_path, folder):
    """Write the table restricted to the listed samples as BIOM HDF5; return its path."""
    ids = open(ids_path).read().split()
    table = biom.load_table(table_path).filter(ids, inplace=False).remove_empty(axis="observation")
    path = f"{folder}/subset.biom"
    with h5py.File(path, "w") as f:
        table.to_hdf5(f, "aam-ds oracle")
    return path


def main(argv):
    if argv[0] == "compute":
        table, tree, metric, alpha, out = argv[1:6]
        method = getattr(unifrac, f"{metric}_fp64")
        kwargs = {"alpha": float(alpha)} if metric == "generalized" else {}
        with tempfile.TemporaryDirectory() as folder:
            if len(argv) > 6:
                table = subset(table, argv[6], folder)
            dm = method(table, tree, **kwargs)
    elif argv[0] == "read-h5":
        dm = unifrac.h5unifrac(argv[1])
        out = argv[2]
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    np.savez(out, ids=np.array(list(dm.ids)), matrix=dm.data)


if __name__ == "__main__":
    main(sys.argv[1:])
