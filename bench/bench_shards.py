"""Pretraining from a sharded dataset (`aam-ds shard`, `data.table: DIR`) at scale: peak RSS per rank and samples/s.

A generator writes BIOM HDF5 tables of ``N`` samples over the demo dataset's 300 ASVs (its tree and
sequences), 20-80 ASVs per sample with random read counts, slice by slice (the table is never held
in memory: only the sample-major ``sample/`` group that `aam-ds shard` reads is written; a small
table, ``--reference`` samples, is written whole with biom-format so that it also loads in memory).
Each table is sharded with `aam-ds shard`, then pretrained with torchrun on ``--ranks`` ranks for
``--steps`` steps, through this file as the rank entry point (it runs launch/pretrain.py's code and
records the whole process's peak RSS, VmHWM, when training returns). Three runs: the large table from
shards, the reference table from shards, the reference table in memory. samples/s is the last
full logged window of each run's metrics.jsonl (``--steps`` / 3 steps, start-up excluded).

    python bench/bench_shards.py --samples 1000000 --reference 10000 --steps 300 --out /tmp/bench-shards
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aam_ds.data.synthetic import demo_data  # noqa: E402
from aam_ds.data.table import load_table  # noqa: E402
from aam_ds.engine.distributed import free_port  # noqa: E402
from aam_ds.tracking import read_metrics  # noqa: E402

SLICE = 20000  # samples generated and written at a time


def sample_slices(n_samples: int, n_asvs: int, seed: int):
    """``(first sample, indptr, ASV columns int32, counts float64)`` of consecutive slices of generated samples."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_samples, SLICE):
        b = min(SLICE, n_samples - start)
        sizes = rng.integers(20, 81, size=b)
        columns = [np.sort(rng.choice(n_asvs, size=k, replace=False)) for k in sizes]
        counts = np.floor(rng.pareto(1.2, size=int(sizes.sum())) * 20 + 1)
        yield start, np.concatenate(([0], np.cumsum(sizes))), np.concatenate(columns).astype(np.int32), counts


def write_streaming(path: Path, n_samples: int, asv_ids: list[str], seed: int = 0) -> None:
    """The BIOM v2.1 ``sample/`` group (ids, CSR by sample) of ``n_samples`` generated samples, slice by slice."""
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"id": "bench", "type": "OTU table", "format-version": [2, 1], "shape": [len(asv_ids), n_samples]})
        h5.create_dataset("observation/ids", data=np.array(asv_ids, dtype=object), dtype=h5py.string_dtype())
        ids = h5.create_dataset("sample/ids", shape=(n_samples,), dtype=h5py.string_dtype())
        indptr = h5.create_dataset("sample/matrix/indptr", shape=(n_samples + 1,), dtype=np.int64)
        data = h5.create_dataset("sample/matrix/data", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(1 << 16,))
        indices = h5.create_dataset("sample/matrix/indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 16,))
        indptr[0] = 0
        for start, local, columns, counts in sample_slices(n_samples, len(asv_ids), seed):
            at = data.shape[0]
            for dataset, values in ((data, counts), (indices, columns)):
                dataset.resize((at + len(values),))
                dataset[at:] = values
            indptr[start + 1 : start + len(local)] = at + local[1:]
            ids[start : start + len(local) - 1] = [f"S{i}" for i in range(start, start + len(local) - 1)]


def write_whole(path: Path, n_samples: int, asv_ids: list[str], seed: int = 0) -> None:
    """The same generated samples as a complete BIOM table (biom-format), for the in-memory path."""
    import biom
    import scipy.sparse as sp

    parts = list(sample_slices(n_samples, len(asv_ids), seed))
    rows = [sp.csr_matrix((counts, columns, local), shape=(len(local) - 1, len(asv_ids))) for _, local, columns, counts in parts]
    table = biom.Table(sp.vstack(rows).T.tocsr(), asv_ids, [f"S{i}" for i in range(n_samples)])
    with h5py.File(path, "w") as h5:
        table.to_hdf5(h5, "aam-ds bench_shards")


def rank_entry() -> None:
    """torchrun's entry point: launch/pretrain.py's code, then this process's peak RSS written next to its metrics."""
    from aam_ds.engine.entry import run_stage
    from aam_ds.engine.trainer import pretrain

    out = Path(os.environ["BENCH_RSS_DIR"])

    def record() -> None:
        status = Path("/proc/self/status").read_text().splitlines()
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        (out / f"rss-rank{os.environ.get('RANK', '0')}.txt").write_text(str(peak))

    def stage(spec, ds_config):
        pretrain(spec, ds_config)
        record()

    sys.argv = [sys.argv[0], *sys.argv[2:]]
    run_stage(stage, description="bench_shards rank")


def pretrain(name: str, table: Path, demo, args: argparse.Namespace) -> dict:
    """One torchrun pretraining run; its samples/s, peak RSS per rank and wall time."""
    run_dir = args.out / f"run-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    settings = {
        "data.table": table,
        "data.tree": demo.tree,
        "data.sequences": demo.sequences,
        "data.cache_dir": args.out / "cache",
        "data.max_asvs": 64,
        "data.max_seq_len": 100,
        "data.split.val_fraction": 0.0,
        "model.preset": "tiny",
        "schedule.steps": args.steps,
        "schedule.warmup_steps": 5,
        "schedule.log_every": args.steps // 3,
        "schedule.eval_every": 10**6,
        "checkpoint.every_steps": 10**6,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": args.micro,
    }
    sets = [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]
    command = [str(ROOT / ".venv/bin/torchrun"), f"--nproc_per_node={args.ranks}", f"--master_port={free_port()}"]
    run_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"BENCH_RSS_DIR": str(run_dir), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([*command, __file__, "rank", *sets], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    every = settings["schedule.log_every"]  # the last full logging window (the run's very last line covers the steps after it)
    last = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train" and r["step"] % every == 0][-1]
    rss = [int((run_dir / f"rss-rank{r}.txt").read_text()) / 2**30 for r in range(args.ranks)]
    return {
        "run": name,
        "samples/s": round(last["samples_per_s"], 1),
        "peak RSS per rank GiB": [round(x, 3) for x in rss],
        "wall s": round(wall),
    }


def shard(table: Path, out: Path, demo) -> float:
    """`aam-ds shard` of ``table`` with the benchmark's data settings; its wall time."""
    start = time.perf_counter()
    command = [str(ROOT / ".venv/bin/aam-ds"), "shard", "--table", str(table), "--tree", str(demo.tree), "--out", str(out)]
    settings = ["--sequences", str(demo.sequences), "--set", "data.max_asvs=64", "--set", "data.max_seq_len=100"]
    subprocess.run([*command, *settings], check=True)
    return time.perf_counter() - start


def main() -> None:
    if sys.argv[1:2] == ["rank"]:
        return rank_entry()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    demo = demo_data(args.out / "cache")
    asv_ids = load_table(demo.table).asv_ids
    large, small = args.out / f"table-{args.samples}.biom", args.out / f"table-{args.reference}.biom"
    if not (args.out / "shards-large" / "manifest.json").is_file():  # a rerun into the same --out reuses the tables and shards
        start = time.perf_counter()
        write_streaming(large, args.samples, asv_ids)
        print(f"generated {args.samples} samples in {time.perf_counter() - start:.0f} s ({large.stat().st_size / 2**20:.0f} MiB)")
        write_whole(small, args.reference, asv_ids)
        for table, folder in ((large, args.out / "shards-large"), (small, args.out / "shards-reference")):
            print(f"aam-ds shard {table.name}: {shard(table, folder, demo):.0f} s")
    results = [
        pretrain("large-shards", args.out / "shards-large", demo, args),
        pretrain("reference-shards", args.out / "shards-reference", demo, args),
        pretrain("reference-memory", small, demo, args),
    ]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
