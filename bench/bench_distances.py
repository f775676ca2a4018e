"""Distances benchmark: our torch engine vs biocore's ssu, and a batch vs a training step.

Prints, in one run on the same threads:
1. full-matrix wall time per UniFrac metric for ``aam-ds distances --engine ssu`` and
   ``--engine torch`` on ECAM (743 samples, 207k-tip insertion tree) and Huang oral (2,537
   samples), end to end (read table and tree, compute, write the .h5), with their max |difference|;
2. the time of one on-the-fly batch of 256 samples (``DistanceTarget.batch``, fp64) per metric,
   as a fraction of one training step (forward, backward, AdamW) of the default model
   (``model.preset=small``, ``data.max_asvs=256``) on Huang oral. The step is timed on
   ``--step-samples`` samples and scaled linearly to 256 (its cost is linear in the samples).

    python bench/bench_distances.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aam_ds.data.dataset import collate
from aam_ds.data.prepare import prepare_data
from aam_ds.data.table import load_table
from aam_ds.distances import cli
from aam_ds.distances.io import read_distance_matrix
from aam_ds.distances.metric import METRICS, UNIFRAC_METRICS
from aam_ds.distances.target import build_distance_target
from aam_ds.engine.objective import required_outputs
from aam_ds.export import model_config
from aam_ds.model.aam import AAMModel
from aam_ds.model.losses import masked_nucleotide_loss, pairwise_distance_loss
from aam_ds.model.masking import mask_nucleotides
from aam_ds.spec import DataSpec, build_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "ECAM": ("ecam/table.biom", "ecam/insertion-tree.nwk"),
    "Huang oral": ("huang_oral_2550/oral_2550.rarefied1000.biom", "huang_oral_2550/tree.nwk"),
}
BATCH = 256


def full_matrix_times(threads: int, metrics: list[str], folder: Path) -> None:
    print(f"\nFull matrix, end to end, {threads} thread(s), fp64 (seconds; max |torch - ssu|)")
    print(f"{'dataset':<12}{'metric':<24}{'ssu':>9}{'torch':>9}{'speed-up':>10}{'max diff':>11}")
    for name, (table, tree) in DATASETS.items():
        for metric in metrics:
            times, outputs = {}, {}
            for engine in ("ssu", "torch"):
                out = folder / f"{engine}.h5"
                start = time.perf_counter()
                cli.main(
                    [
                        "--table",
                        str(SHARED / table),
                        "--tree",
                        str(SHARED / tree),
                        "--metric",
                        metric,
                        "--engine",
                        engine,
                        "--out",
                        str(out),
                        "--overwrite",
                        "--threads",
                        str(threads),
                        "--device",
                        "cpu",
                        "--no-progress",
                    ]
                )
                times[engine] = time.perf_counter() - start
                outputs[engine] = read_distance_matrix(out)
            (ids, ssu), (torch_ids, ours) = outputs["ssu"], outputs["torch"]
            position = {s: i for i, s in enumerate(torch_ids)}
            rows = [position[s] for s in ids]
            diff = np.abs(ours[np.ix_(rows, rows)] - ssu).max()
            print(
                f"{name:<12}{metric:<24}{times['ssu']:>9.2f}{times['torch']:>9.2f}{times['ssu'] / times['torch']:>9.2f}x{diff:>11.1e}",
                flush=True,
            )


def training_step_seconds(step_samples: int, repeats: int, cache_dir: Path) -> tuple[float, object]:
    """Median seconds of one default-model training step on ``step_samples`` Huang samples."""
    table, tree = DATASETS["Huang oral"]
    spec = build_spec({"data": {"table": str(SHARED / table), "tree": str(SHARED / tree), "cache_dir": str(cache_dir)}})
    prepared = prepare_data(spec)
    train = prepared.dataset("train")
    torch.manual_seed(0)
    model = AAMModel(model_config(spec.model), prepared.max_seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.optim.lr)
    want = required_outputs(spec.loss)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(step_samples, step_samples)
    target = (target + target.T) / 2
    times = []
    for _ in range(repeats + 1):
        batch = collate([train[int(i)] for i in torch.randperm(len(train), generator=generator)[:step_samples]])
        start = time.perf_counter()
        masked, labels = mask_nucleotides(batch["tokens"], spec.loss.mask_fraction, generator)
        out = model(masked, batch["counts"], want)
        loss = pairwise_distance_loss(out["sample_embedding"], target) + masked_nucleotide_loss(out["nucleotide_logits"], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), prepared


def batch_seconds(target, n_samples: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(1)
    times = []
    for _ in range(repeats + 1):
        rows = torch.randperm(n_samples, generator=generator)[:BATCH]
        start = time.perf_counter()
        target.batch(rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def batch_vs_step(threads: int, step_samples: int, repeats: int, cache_dir: Path) -> None:
    step, prepared = training_step_seconds(step_samples, repeats, cache_dir)
    step_256 = step * BATCH / step_samples
    print(
        f"\nOne training step of the default model (preset small, max_asvs 256), {threads} thread(s): "
        f"{step:.2f} s on {step_samples} samples -> {step_256:.1f} s for {BATCH} samples"
    )
    print(f"One on-the-fly batch of {BATCH} (fp64, cpu): seconds and fraction of that step (target < 5%)")
    print(f"{'dataset':<12}{'metric':<24}{'batch s':>9}{'of step':>9}")
    for name, (table_name, tree) in DATASETS.items():
        table = prepared.table if name == "Huang oral" else load_table(SHARED / table_name)
        for metric in METRICS:
            target = build_distance_target(DataSpec(tree=SHARED / tree, metric=metric), table, "cpu")
            seconds = batch_seconds(target, table.shape[0], repeats)
            print(f"{name:<12}{metric:<24}{seconds:>9.3f}{100 * seconds / step_256:>8.2f}%", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads and ssu's OMP_NUM_THREADS")
    parser.add_argument("--metrics", nargs="+", default=list(UNIFRAC_METRICS), choices=UNIFRAC_METRICS)
    parser.add_argument("--step-samples", type=int, default=16, help="samples in the timed training step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true", help="only the batch-vs-step part")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: this benchmark needs the real data folder beside the repository")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="aam-bench-distances-") as folder:
        if not args.skip_full:
            full_matrix_times(args.threads, args.metrics, Path(folder))
        batch_vs_step(args.threads, args.step_samples, args.repeats, Path(folder) / "cache")


if __name__ == "__main__":
    main()
