"""``aam-ds distances``: a full distance matrix from a table (and tree), written as a file.

    aam-ds distances --table T.biom --tree P.nwk --metric unweighted --out F.h5 [--engine ssu]
    aam-ds distances --spec run.yaml --out F.h5      # the run's data.table / tree / metric / alpha / pseudocount
    aam-ds distances --table DIR --out F.h5          # a folder written by `aam-ds shard` (its rows, its tree)

The samples and reads compared are those training compares (:func:`aam_ds.data.preprocess.distance_table`): rarefied
to ``data.rarefy_depth`` with ``data.rarefy_seed`` (the same seeded draws), without the ASVs that
``data.ambiguous_bases=drop_asv`` drops; a sharded dataset folder holds them as it was built. An existing ``--out``
is replaced only with ``--overwrite``.

The output format follows the suffix of ``--out`` (``.h5`` unifrac layout, ``.npy`` + IDs,
otherwise square TSV). With the torch engine an ``.h5`` is written block by block (memory bounded by
``--block-size``, not ``N x N``) and a killed run continues where it stopped when rerun
(:mod:`aam_ds.distances.blockfile`). The metric flags are the run spec's fields (:mod:`aam_ds.spec.flags`), with the
names, defaults and bounds of the metric registry (:mod:`aam_ds.distances.registry`).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aam_ds.distances.registry import ALIAS_TEXT, DEFAULT_METRIC, METRIC_NAMES, PARAMETERS, check_parameter, get_metric, metric_flag
from aam_ds.errors import AamInputError
from aam_ds.spec import DataSpec, RunSpec
from aam_ds.spec.flags import add_spec_arguments, fill_from_spec, spec_flag_help

if TYPE_CHECKING:
    from aam_ds.data.table import FeatureTable

# with none of these, --device auto is the CPU without asking torch (NVIDIA, ROCm, WSL GPU device files)
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")

# flag dest -> (run-spec field, default without a spec)
SPEC_FIELDS = {
    "table": ("data.table", None),
    "tree": ("data.tree", None),
    "metric": ("data.metric", DEFAULT_METRIC),
    **{name: (f"data.{name}", p.default) for name, p in PARAMETERS.items()},
    "drop_missing_tips": ("data.drop_missing_tips", False),
    "cache_dir": ("data.cache_dir", "~/.cache/aam-ds"),
    "rarefy_depth": ("data.rarefy_depth", None),
    "rarefy_seed": ("data.rarefy_seed", 0),
    "sequences": ("data.sequences", None),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds distances`` to ``parser``."""
    parser.add_argument("--table", help=spec_flag_help("BIOM (HDF5/JSON/TSV) or FeatureTable[Frequency] .qza", "data.table"))
    parser.add_argument("--tree", help=spec_flag_help("rooted Newick or Phylogeny[Rooted] .qza (UniFrac metrics)", "data.tree"))
    parser.add_argument(
        "--metric",
        type=metric_flag,
        metavar="NAME",
        help=spec_flag_help(
            f"distance between samples: {', '.join(METRIC_NAMES)} (also accepted: {ALIAS_TEXT})", "data.metric", DEFAULT_METRIC
        ),
    )
    for parameter in PARAMETERS.values():
        parser.add_argument(
            f"--{parameter.name}", type=float, help=spec_flag_help(parameter.description, f"data.{parameter.name}", parameter.default)
        )
    parser.add_argument(
        "--rarefy-depth",
        type=int,
        help=spec_flag_help("rarefy every sample to this many reads first, as training does", "data.rarefy_depth"),
    )
    parser.add_argument("--rarefy-seed", type=int, help=spec_flag_help("seed of the rarefaction draws", "data.rarefy_seed", 0))
    parser.add_argument(
        "--sequences",
        help=spec_flag_help(
            "FASTA or FeatureData[Sequence] .qza: ASVs with ambiguous bases (data.ambiguous_bases=drop_asv)", "data.sequences"
        ),
    )
    parser.add_argument("--out", required=True, help="output: .h5 (unifrac layout), .npy (+ .ids.txt) or .tsv")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists (otherwise refused)")
    parser.add_argument("--engine", choices=("torch", "ssu"), default="torch", help="ours, or biocore's ssu binary")
    parser.add_argument("--dtype", choices=("fp64", "fp32"), default="fp64", help="precision of the torch engine")
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device; auto = cuda when available, else cpu (where unweighted and weighted UniFrac run without torch)",
    )
    parser.add_argument("--block-size", type=int, default=1024, help="samples per block of the torch engine")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch, numpy's BLAS and ssu's OMP_NUM_THREADS)")
    parser.add_argument(
        "--drop-missing-tips",
        action="store_true",
        default=None,
        help=spec_flag_help("drop ASVs absent from the tree (warns)", "data.drop_missing_tips"),
    )
    parser.add_argument(
        "--cache-dir", help=spec_flag_help("where parsed trees are cached (by content hash)", "data.cache_dir", "~/.cache/aam-ds")
    )
    add_spec_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``aam-ds distances``: compute the full distance matrix and write it to ``--out``; returns 0."""
    from aam_ds.distances.io import write_distance_matrix

    data = _data_settings(args, fill_from_spec(args, SPEC_FIELDS))
    if args.table is None:
        raise AamInputError("--table", "no feature table given", "pass --table T.biom, or --spec with data.table set")
    if Path(args.out).exists() and not args.overwrite:
        raise AamInputError(
            args.out, "exists: aam-ds distances does not replace it unasked", "pass --overwrite to replace it, or choose another --out"
        )
    sharded = Path(args.table).is_dir()
    if sharded and args.tree is None:
        args.tree = _folder_tree(args.table)
    metric_needs_tree = get_metric(args.metric, "--metric").needs_tree
    for name in PARAMETERS:
        check_parameter(name, getattr(args, name), f"--{name}")
    if metric_needs_tree and not args.tree:
        raise AamInputError("--tree", f"metric {args.metric} (UniFrac) needs a tree", "pass --tree P.nwk (or a .qza)")
    if args.block_size <= 0:
        raise AamInputError("--block-size", f"must be positive, got {args.block_size}", "give e.g. 1024")
    start = time.perf_counter()
    if args.engine == "ssu":
        from aam_ds.distances.ssu import ssu_full_matrix  # no torch

        _check_ssu_reads_the_table_as_is(args, data, sharded)

        ids, matrix = ssu_full_matrix(
            args.table,
            args.tree,
            args.metric,
            alpha=args.alpha,
            dtype=args.dtype,
            threads=args.threads,
            drop_missing_tips=args.drop_missing_tips,
        )
        write_distance_matrix(args.out, ids, matrix)
    else:
        ids = _our_engine(args, _table(args, data, sharded), input_fingerprint(args, data), metric_needs_tree)
    print(f"{args.metric} distances of {len(ids)} samples ({args.engine}) -> {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def _data_settings(args: argparse.Namespace, spec: RunSpec) -> DataSpec:
    """The run's data settings with the flags' rarefaction (the flags won over the spec's fields)."""
    if args.rarefy_depth is not None and args.rarefy_depth <= 0:
        raise AamInputError("--rarefy-depth", f"must be positive, got {args.rarefy_depth}", "give a read depth, e.g. 1000")
    return spec.data.model_copy(update={"rarefy_depth": args.rarefy_depth, "rarefy_seed": args.rarefy_seed, "sequences": args.sequences})


def _folder_tree(folder: str) -> str | None:
    """The tree copied into a sharded dataset folder (None without one)."""
    from aam_ds.data.shards import read_manifest

    return next((str(Path(folder) / name) for name in read_manifest(folder)["files"] if name.startswith("tree")), None)


def _check_ssu_reads_the_table_as_is(args: argparse.Namespace, data: DataSpec, sharded: bool) -> None:
    """``--engine ssu`` reads the BIOM file itself: refused where training would compare other reads than the file's."""
    if sharded:
        raise AamInputError("--engine ssu", f"reads a BIOM file, not the sharded dataset folder {args.table}", "use --engine torch")
    if data.rarefy_depth is not None or data.ambiguous_bases == "drop_asv":
        raise AamInputError(
            "--engine ssu",
            "reads the table as it is, but the run rarefies it (data.rarefy_depth) or drops ASVs (data.ambiguous_bases=drop_asv)",
            "use --engine torch (the default), which compares the reads training compares",
        )


def _table(args: argparse.Namespace, data: DataSpec, sharded: bool) -> FeatureTable:
    """The samples and reads to compare: the table preprocessed as training does, or a sharded dataset folder's rows."""
    if not sharded:
        from aam_ds.data.preprocess import distance_table
        from aam_ds.data.table import load_table

        return distance_table(load_table(args.table), data, data.sequences)
    from aam_ds.data.shards import read_manifest, read_sharded_table

    table, _, built = read_sharded_table(args.table)
    differ = {
        k: (built[k], getattr(data, k)) for k in ("rarefy_depth", "rarefy_seed") if data.rarefy_depth and built[k] != getattr(data, k)
    }
    if differ:
        raise AamInputError(
            str(args.table),
            "was built with " + ", ".join(f"data.{k}={b}, the run asks for {a}" for k, (b, a) in differ.items()),
            "drop --rarefy-depth / --rarefy-seed (the folder's rows are rarefied already), or pass the BIOM table "
            f"{read_manifest(args.table)['source']['table']} instead",
        )
    return table


def _our_engine(args: argparse.Namespace, table: FeatureTable, fingerprint: str, metric_needs_tree: bool) -> list[str]:
    """Compute the matrix of ``table`` with our kernels and write it to ``--out`` (an ``.h5`` continues a partial file of
    the same ``fingerprint``); returns the sample IDs. On a machine
    without a GPU, a metric with a CPU kernel runs without importing torch (:mod:`aam_ds.distances.unifrac_cpu`)."""
    from threadpoolctl import threadpool_limits

    from aam_ds.distances.blockfile import write_blockwise_h5
    from aam_ds.distances.full import full_matrix
    from aam_ds.distances.io import write_distance_matrix
    from aam_ds.distances.tree import read_tree
    from aam_ds.distances.unifrac_cpu import build_cpu_metric

    tree = read_tree(args.tree, args.cache_dir) if metric_needs_tree else None
    metric = None
    if args.device == "cpu" or (args.device == "auto" and not any(Path(p).exists() for p in GPU_DEVICE_FILES)):
        metric = build_cpu_metric(args.metric, table, tree, args.drop_missing_tips, {"fp64": "float64", "fp32": "float32"}[args.dtype])
    if metric is None:
        metric = _torch_metric(args, table, tree)
    with threadpool_limits(limits=args.threads, user_api="blas"):  # numpy's BLAS (the CPU kernels); None: no limit
        if Path(args.out).suffix in (".h5", ".hdf5"):
            done_before, total = write_blockwise_h5(metric, args.out, fingerprint, args.block_size, not args.no_progress)
            if done_before:
                print(f"continued {args.out}: {done_before} of {total} blocks were already written")
        else:
            write_distance_matrix(args.out, metric.sample_ids, full_matrix(metric, args.block_size, progress=not args.no_progress))
    return metric.sample_ids


def _torch_metric(args: argparse.Namespace, table: FeatureTable, tree):
    """The metric with the torch kernels on ``--device`` (auto: cuda when torch finds one, else cpu)."""
    import torch

    from aam_ds.distances.metric import DTYPES, build_metric

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    return build_metric(
        args.metric,
        table,
        tree,
        alpha=args.alpha,
        pseudocount=args.pseudocount,
        drop_missing_tips=args.drop_missing_tips,
        device=device,
        dtype=DTYPES[args.dtype],
    )


def input_fingerprint(args: argparse.Namespace, data: DataSpec) -> str:
    """SHA-256 of the table, tree and sequences files' bytes (a sharded dataset: its manifest's) and of the options and
    data settings that change the values: a partial matrix file is continued only by a run with the same fingerprint."""
    digest = hashlib.sha256()
    for name in ("table", "tree", "sequences"):
        path = getattr(args, name)
        if path and Path(path).is_dir():  # a sharded dataset: its manifest holds every file's SHA-256
            path = Path(path) / "manifest.json"
        if path and Path(path).is_file():
            with open(path, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    options = [args.metric, args.dtype, args.drop_missing_tips, *(getattr(args, name) for name in PARAMETERS)]
    options += [data.rarefy_depth, data.rarefy_seed, data.ambiguous_bases]
    digest.update(repr(options).encode())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``python -m aam_ds.distances.cli``: parse ``argv`` and run; returns the exit status."""
    parser = argparse.ArgumentParser(prog="aam-ds distances", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
