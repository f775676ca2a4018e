"""``--engine ssu``: biocore's Striped UniFrac binary (Debian ``unifrac-tools``, conda ``unifrac-binaries``)
run on the same inputs as the torch engine, its HDF5 output read back. Imports no torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import h5py
import numpy as np

from aam_ds.data.table import FeatureTable, load_table
from aam_ds.distances.branches import tip_nodes_of
from aam_ds.distances.io import read_distance_matrix
from aam_ds.distances.registry import get_metric
from aam_ds.distances.tree import newick_text, read_tree
from aam_ds.errors import AamInputError


def ssu_full_matrix(
    table_path: str | Path,
    tree_path: str | Path,
    metric: str,
    *,
    alpha: float = 0.5,
    dtype: str = "fp64",
    threads: int | None = None,
    drop_missing_tips: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Run ``ssu`` on the table and tree; return ``(ids, matrix [N, N])``.

    The tree is checked (:func:`read_tree`) and written as plain Newick to a temp folder; tables that
    ``ssu`` cannot read directly (.qza, compressed, TSV/JSON, a table with ASVs missing from the tree
    when ``drop_missing_tips``) are written there as BIOM HDF5. Errors name the user's files.
    """
    ssu = shutil.which("ssu")
    if ssu is None:
        raise AamInputError(
            "--engine ssu",
            "the `ssu` binary is not on PATH",
            "install biocore's UniFrac (`apt install unifrac-tools` or `conda install -c bioconda unifrac-binaries`) "
            "or use the default --engine torch",
        )
    if not get_metric(metric, "--metric").needs_tree:
        raise AamInputError("--metric", f"ssu computes only UniFrac, not {metric}", "use --engine torch for " + metric)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="aam-ssu-") as tmp:
        tmp = Path(tmp)
        table_file, tree_file = _ssu_inputs(Path(table_path), Path(tree_path), tmp, drop_missing_tips)
        out = tmp / "ssu.h5"
        command = [
            ssu,
            "-i",
            str(table_file),
            "-t",
            str(tree_file),
            "-m",
            f"{metric}_{dtype}",
            "-o",
            str(out),
            "-r",
            f"hdf5_{dtype}",
            "--pcoa",
            "0",
        ]
        if metric == "generalized":
            command += ["-a", str(alpha)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            stderr = done.stderr.strip()[-500:].replace(str(table_file), str(table_path)).replace(str(tree_file), str(tree_path))
            raise AamInputError(
                f"ssu on {table_path} and {tree_path}", f"failed (exit {done.returncode}): {stderr}", "check the table and tree inputs"
            )
        return read_distance_matrix(out)


def _ssu_inputs(table_path: Path, tree_path: Path, tmp: Path, drop_missing_tips: bool) -> tuple[Path, Path]:
    """The table and tree as files ``ssu`` reads, checked first (a tree without branch lengths, a
    table that does not load) so that errors name the user's files, never the temporary copies."""
    tree = read_tree(tree_path)
    tree_file = tmp / "tree.nwk"  # plain UTF-8 Newick whatever the container (.qza, gzip, BOM, CRLF)
    tree_file.write_text(newick_text(tree_path))
    if h5py.is_hdf5(table_path) and not drop_missing_tips:
        return table_path, tree_file
    table = load_table(table_path)
    if drop_missing_tips:
        columns, _ = tip_nodes_of(table, tree, drop_missing_tips=True)
        table = FeatureTable(table.sample_ids, [table.asv_ids[j] for j in columns], table.counts[:, columns].tocsr(), table.source)
    table_file = tmp / "table.biom"
    _write_biom(table, table_file)
    return table_file, tree_file


def _write_biom(table: FeatureTable, path: Path) -> None:
    """BIOM v2.1 HDF5 (observations x samples) for ``ssu``."""
    import biom

    observations = biom.Table(table.counts.T.tocsr(), table.asv_ids, table.sample_ids)
    with h5py.File(path, "w") as f:
        observations.to_hdf5(f, "aam-ds")
