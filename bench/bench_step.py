"""Training-step variants side by side in one process, their steps interleaved, so that a shared,
noisy machine slows every variant alike: samples/s and MFU of each.

Each variant is a real :class:`~aam_ds.engine.trainer.Trainer` (DeepSpeed engine, objective, batch
stream) on the same data and seed; round ``r`` runs step ``r`` of every variant in turn, and the
table gives the median step time over the rounds after the first (warm-up). Variants:

- ``fp32, before``: the step before issue 19 (masked-nucleotide pretraining masked every copy of an
  ASV and fed the masked copies to the sample path too, every copy encoded; fp32 uses torch's fused
  attention kernel as before): the baseline (:class:`PerCopyMasking`);
- ``fp32``: the sample path reads each distinct ASV of a batch once, unmasked, and the nucleotide
  loss one masked copy of each (:mod:`aam_ds.model.packing`);
- ``bf16``: the same in DeepSpeed bf16 (weights and activations in bf16), with the explicit
  attention used for bf16 on CPU (:func:`aam_ds.model.blocks.explicit_attention`) and LayerNorm and
  the nucleotide embedding in float32 (:class:`aam_ds.model.blocks.LayerNorm`).

The MFU column divides the same model FLOPs (:mod:`aam_ds.engine.flops`, the current layout) by
each variant's time, so its ratios are the speed ratios.

Peak memory cannot be told apart in one process: ``bench/bench_engine.py`` measures it per run.

    OMP_NUM_THREADS=2 python bench/bench_step.py --rounds 8 --set data.table=... --set data.tree=...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"fp32, before": ("fp32", True), "fp32": ("fp32", False), "bf16": ("bf16", False)}  # (precision, baseline)


def per_copy_masking(objective_class):
    """The objective before issue 19, as a subclass of ``objective_class`` (:class:`~aam_ds.engine.objective.Objective`)."""

    class PerCopyMasking(objective_class):
        """Masks every present copy of an ASV independently and feeds the masked copies to both the
        nucleotide head and the sample path (identity vectors from the unmasked tokens)."""

        def forward(self, model, batch, generator, valid=None):
            from aam_ds.model.blocks import asv_hash_buckets
            from aam_ds.model.masking import mask_nucleotides

            tokens, labels, asv_ids = batch["tokens"], None, None
            if "nucleotide_logits" in self.want:
                asv_ids = asv_hash_buckets(tokens, model.module.config.asv_identity_buckets)
                tokens, labels = mask_nucleotides(tokens, self.loss.mask_fraction, generator)
            return model(tokens, batch["counts"], self.want, batch.get("covariates"), asv_ids), labels

    return PerCopyMasking


def build(name: str, args: argparse.Namespace, work: Path):
    from aam_ds.engine.distributed import init_distributed
    from aam_ds.engine.objective import Objective
    from aam_ds.engine.trainer import Trainer
    from aam_ds.spec import load_spec

    precision, baseline = VARIANTS[name]
    settings = {
        "schedule.steps": 10**6,
        "schedule.log_every": 10**6,
        "schedule.eval_every": 10**6,
        "schedule.warmup_steps": 1,
        "tracking.rich": "false",
        "tracking.run_dir": work / name.replace(", ", "-"),
        "parallel.precision": precision,
        "parallel.micro_batch_size": args.micro,
        "loss.nucleotide_weight": 1.0,
        "loss.pairwise_weight": 1.0,
    }
    overrides = [f"{k}={v}" for k, v in settings.items()] + args.set
    trainer = Trainer.build(init_distributed(), load_spec(None, overrides), None, False)
    if baseline:
        trainer.model.pack_asvs = False
        objective = trainer.objective
        trainer.objective = per_copy_masking(Objective)(objective.loss, objective.distance_target, objective.class_weights)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=6, help="steps of each variant (the first is a warm-up)")
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run spec override (repeatable)")
    args = parser.parse_args()

    from aam_ds.engine.peak import peak_flops

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: build(name, args, Path(tmp)) for name in args.variants}
        times: dict[str, list[float]] = {name: [] for name in trainers}
        flops: dict[str, float] = dict.fromkeys(trainers, 0.0)
        for step in range(args.rounds):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step(step)
                times[name].append(time.perf_counter() - start)
                counted = trainer.flops.take().model
                flops[name] += counted if step else 0.0
            print(f"round {step}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
        base = statistics.median(times[args.variants[0]][1:])
        print(f"\n{' '.join(args.set)}; micro batch {args.micro}, {args.rounds - 1} timed rounds")
        print("| variant | step (s, median) | samples/s | vs first | MFU |")
        print("|---|---:|---:|---:|---:|")
        for name, trainer in trainers.items():
            step_s = statistics.median(times[name][1:])
            mfu = flops[name] / sum(times[name][1:]) / peak_flops(trainer.ctx.device, VARIANTS[name][0])
            print(f"| {name} | {step_s:.2f} | {args.micro / step_s:.2f} | {base / step_s:.2f}x | {mfu:.1%} |")


if __name__ == "__main__":
    main()
