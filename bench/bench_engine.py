"""Training throughput, model-FLOPs utilisation and peak memory per ZeRO stage and precision, for 1
and 2 ranks, through the real entry point.

Each configuration is a real ``launch/pretrain.py`` run (plain python for one rank, torchrun for
more), on the demo data unless ``--set data.table=...`` says otherwise; samples/s (global batch x
steps / time, from the last logged window, so start-up and the first steps are excluded), ``mfu``
(model FLOPs of the batches seen over time and the device's measured matmul peak in the run's
precision, :mod:`aam_ds.engine.flops`, :mod:`aam_ds.engine.peak`) and the worst rank's peak memory
(CUDA allocator peak on a GPU, peak RSS on CPU) are read from its metrics.jsonl.

``--baseline-root DIR`` runs every configuration with the code in DIR too (e.g. ``git archive`` of
an earlier commit), interleaved with this checkout's runs and ``--repeat`` times, so that before
and after are measured side by side on the same data and seed. ``--profile DIR`` instead profiles
one training step (after a warm-up step) in this process with torch.profiler: a table of the
most expensive operators and a Chrome trace (``DIR/trace.json``, open in chrome://tracing or
https://ui.perfetto.dev).

    python bench/bench_engine.py                       # CPU: ZeRO 0-3 x 1, 2 ranks, demo data
    python bench/bench_engine.py --ranks 1 --stages 0 2 3 --preset base --micro 16 --precision bf16   # one GPU
    python bench/bench_engine.py --ranks 1 --stages 2 --precision fp32 bf16 --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aam_ds.engine.distributed import free_port  # noqa: E402
from aam_ds.tracking import read_metrics  # noqa: E402


def settings_of(stage: int, precision: str, args: argparse.Namespace, run_dir: Path) -> dict[str, object]:
    """The run spec overrides of one configuration (``--set`` entries last, so they win)."""
    settings: dict[str, object] = {
        "model.preset": args.preset,
        "data.max_asvs": args.max_asvs,
        "data.max_seq_len": args.max_seq_len,
        "data.cache_dir": args.cache_dir or run_dir.parent / "cache",
        "schedule.steps": args.steps,
        "schedule.warmup_steps": 1,
        "schedule.log_every": args.steps // 2,
        "schedule.eval_every": 10**6,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": args.micro,
        "parallel.zero_stage": stage,
        "parallel.precision": precision,
        "loss.nucleotide_weight": 1.0,
        "loss.pairwise_weight": 1.0,
    }
    settings.update(dict(entry.split("=", 1) for entry in args.set))
    return settings


def run_one(stage: int, ranks: int, precision: str, root: Path, args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    """One training run with the code in ``root``: samples/s, MFU (NaN when that code does not report
    it) and the worst rank's peak memory (GiB) of its last logged window."""
    sets = [a for k, v in settings_of(stage, precision, args, run_dir).items() for a in ("--set", f"{k}={v}")]
    script = str(root / "launch" / "pretrain.py")
    bin_dir = Path(sys.executable).parent
    cmd = (
        [sys.executable, script]
        if ranks == 1
        else [str(bin_dir / "torchrun"), f"--nproc_per_node={ranks}", f"--master_port={free_port()}", script]
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(root)}
    proc = subprocess.run([*cmd, *sets], cwd=root, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode:
        raise RuntimeError(f"ZeRO-{stage} x {ranks} ({precision}, {root}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    last = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"][-1]
    return {
        "samples_per_s": last["samples_per_s"],
        "mfu": last["metrics"].get("mfu", float("nan")),
        "peak_gib": last["metrics"]["peak_memory_gib"],
    }


def profile_step(args: argparse.Namespace, work: Path) -> None:
    """torch.profiler over one training step (the second) of the first configuration, in this process."""
    import torch

    from aam_ds.engine.distributed import init_distributed
    from aam_ds.engine.trainer import Trainer
    from aam_ds.spec import load_spec

    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args.stages[0], args.precision[0], args, work / "profile")
    trainer = Trainer.build(init_distributed(), load_spec(None, [f"{k}={v}" for k, v in settings.items()]), None, False)
    trainer.train_step(0)  # warm-up: kernels chosen, buffers allocated
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        trainer.train_step(1)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30)
    (out / "operators.txt").write_text(table + "\n")
    prof.export_chrome_trace(str(out / "trace.json"))
    print(table)
    print(f"operator table: {out / 'operators.txt'}; Chrome trace: {out / 'trace.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-asvs", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=100)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a further run spec override (repeatable)")
    parser.add_argument("--cache-dir", type=Path, help="token cache shared by the runs (default: a temporary one)")
    parser.add_argument("--baseline-root", type=Path, help="also run each configuration with the code in this folder")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration (interleaved); the table gives the median")
    parser.add_argument("--profile", metavar="DIR", help="profile one step of the first stage and precision instead")
    parser.add_argument("--timeout", type=int, default=1200)
    args = parser.parse_args()

    import torch

    from aam_ds.engine.peak import peak_flops

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # the peak the runs will see
    name = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    peaks = ", ".join(f"{p} {peak_flops(device, p) / 1e9:,.0f} GFLOP/s" for p in args.precision)
    print(
        f"device: {name}; measured matmul peak: {peaks}; preset {args.preset}, micro batch {args.micro}/rank, "
        f"{args.max_asvs} ASVs x {args.max_seq_len} nt, {args.steps} steps, losses pairwise + nucleotide; "
        f"overrides: {' '.join(args.set) or 'none'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.profile:
            profile_step(args, Path(tmp))
            return
        codes = [("this", ROOT)] + ([("baseline", args.baseline_root.resolve())] if args.baseline_root else [])
        print("| code | precision | ZeRO | ranks | samples/s | MFU | peak memory / rank (GiB) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for ranks in args.ranks:
            for stage in args.stages:
                for precision in args.precision:
                    results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in codes}
                    for repeat in range(args.repeat):
                        for label, root in codes:
                            run_dir = Path(tmp) / f"{label}-{precision}-zero{stage}-r{ranks}-{repeat}"
                            results[label].append(run_one(stage, ranks, precision, root, args, run_dir))
                    for label, _ in codes:
                        med = {key: statistics.median(r[key] for r in results[label]) for key in results[label][0]}
                        print(
                            f"| {label} | {precision} | {stage} | {ranks} | {med['samples_per_s']:.2f} | {med['mfu']:.1%} | "
                            f"{med['peak_gib']:.3f} |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
