"""Training throughput and peak memory per ZeRO stage, for 1 and 2 ranks, through the real entry point.

Each configuration is a real ``launch/pretrain.py`` run on the demo data (plain python for one
rank, torchrun for more); samples/s (global batch x steps / time, from the last logged window,
so start-up and the first step are excluded) and the worst rank's peak memory (CUDA allocator
peak on a GPU, peak RSS on CPU) are read from its metrics.jsonl.

    python bench/bench_engine.py                       # CPU: ZeRO 0-3 x 1, 2 ranks
    python bench/bench_engine.py --ranks 1 --preset small --micro 16   # e.g. on one GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aam_ds.engine.distributed import free_port  # noqa: E402
from aam_ds.tracking import read_metrics  # noqa: E402


def run_one(stage: int, ranks: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    run_dir = work / f"zero{stage}-r{ranks}"
    settings = {
        "model.preset": args.preset, "data.max_asvs": args.max_asvs, "data.max_seq_len": args.max_seq_len,
        "data.cache_dir": work / "cache", "schedule.steps": args.steps, "schedule.warmup_steps": 1,
        "schedule.log_every": args.steps // 2, "schedule.eval_every": 10**6, "tracking.run_dir": run_dir,
        "tracking.rich": "false", "parallel.micro_batch_size": args.micro, "parallel.zero_stage": stage,
        "parallel.precision": args.precision, "loss.nucleotide_weight": 1.0, "loss.pairwise_weight": 1.0,
    }  # fmt: skip
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    script = str(ROOT / "launch" / "pretrain.py")
    bin_dir = Path(sys.executable).parent
    cmd = ([sys.executable, script] if ranks == 1 else
           [str(bin_dir / "torchrun"), f"--nproc_per_node={ranks}", f"--master_port={free_port()}", script])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([*cmd, *sets], cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode:
        raise RuntimeError(f"ZeRO-{stage} x {ranks} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    last = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"][-1]
    return {"samples_per_s": last["samples_per_s"], "peak_gib": last["metrics"]["peak_memory_gib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-asvs", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=100)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    print(f"device: {device}; preset {args.preset}, micro batch {args.micro}/rank, {args.precision}, "
          f"{args.max_asvs} ASVs x {args.max_seq_len} nt, {args.steps} steps, losses pairwise + nucleotide")
    print("| ZeRO | ranks | samples/s | peak memory / rank (GiB) |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in args.ranks:
            for stage in args.stages:
                r = run_one(stage, ranks, args, Path(tmp))
                print(f"| {stage} | {ranks} | {r['samples_per_s']:.1f} | {r['peak_gib']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
