"""The run specs of the two AAM stages of ``aam-ds benchmark``: pretraining on every sample
(label-free) and cross-validated fine-tuning on the benchmark's folds, from the recipe's stage
budgets (:mod:`aam_ds.benchmark.recipe`), the inputs and the user's ``--set`` overrides."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aam_ds.benchmark.runner import BenchmarkInputs


def data_overrides(inputs: BenchmarkInputs) -> list[str]:
    """Run-spec fields both AAM stages share: inputs, distance metric, token cache."""
    items = [
        f"data.table={inputs.table}",
        f"data.max_seq_len={inputs.max_seq_len}",
        f"data.metric={inputs.metric or ('unweighted' if inputs.tree else 'braycurtis')}",
    ]
    if inputs.tree:
        items.append(f"data.tree={inputs.tree}")
    if inputs.sequences:
        items.append(f"data.sequences={inputs.sequences}")
    if inputs.cache_dir:
        items.append(f"data.cache_dir={inputs.cache_dir}")
    return items


def _stage_spec(inputs: BenchmarkInputs, fixed: list[str], budget, n_samples: int, evaluations: int, smallest: int | None = None):
    """The stage's run spec; its schedule (steps, warmup, evaluation and log intervals) follows from
    the budget and the spec's own global batch, except fields the user set with ``--set schedule.*``.
    ``n_samples``: the samples a run of this stage trains on (before its validation part),
    ``smallest`` the fewest any of its runs gets (default: ``n_samples``); a recipe's global batch
    larger than that shrinks to fit (small tables), unless the user set ``parallel.*`` batch sizes."""
    from aam_ds.spec import ScheduleSpec, load_spec

    items = inputs.recipe.stage_spec(budget) + data_overrides(inputs) + fixed + inputs.extra
    spec = load_spec(None, items)
    fits = training_batch_cap(smallest or n_samples, spec.data.split.val_fraction)
    user_batch = any(item.startswith(("parallel.micro_batch_size", "parallel.global_batch_size")) for item in inputs.extra)
    if spec.parallel.global_batch_size > fits and not user_batch:
        plan = spec.parallel.batch_plan()
        plan = plan.with_micro(max(1, fits // (plan.grad_accum_steps * plan.world_size)), plan.grad_accum_steps)
        spec = load_spec(None, items + [f"parallel.{name}={size}" for name, size in plan.sizes().items() if name != "grad_accum_steps"])
    steps = budget.steps(n_samples, spec.parallel.global_batch_size)
    timing = {
        "steps": steps,
        "warmup_steps": max(1, steps // 20),
        "eval_every": max(1, steps // evaluations),
        "log_every": max(1, steps // 10),
    }
    user_set = {item.split("=", 1)[0].removeprefix("schedule.") for item in inputs.extra if item.startswith("schedule.")}
    timing = {key: value for key, value in timing.items() if key not in user_set}
    schedule = ScheduleSpec.model_validate({**spec.schedule.model_dump(), **timing})
    return spec.model_copy(update={"schedule": schedule})


def training_batch_cap(n_samples: int, val_fraction: float) -> int:
    """The largest global batch sure to fit the training part of ``n_samples`` samples once a
    validation part of ``val_fraction`` is carved off (rounding per stratum may take a sample more)."""
    return n_samples if not val_fraction else max(1, math.floor(n_samples * (1 - val_fraction)) - 1)


def aam_pretrain_spec(inputs: BenchmarkInputs, n_samples: int):
    """Pretraining on every sample (label-free), 5 % of them (at least 6, so that distance r has 15
    pairs on small tables) held out to track distance r."""
    budget = inputs.recipe.pretrain.for_table(n_samples)
    fixed = [
        f"tracking.run_dir={inputs.out_dir / 'aam' / 'pretrain'}",
        "tracking.overwrite=true",
        "tracking.rich=false",
        f"data.split.val_fraction={max(0.05, min(0.2, 6 / max(n_samples, 1))):.4f}",
        f"data.split.seed={inputs.seed}",
        f"schedule.seed={inputs.seed}",
    ]
    return _stage_spec(inputs, fixed, budget, n_samples, evaluations=4)


def aam_finetune_spec(
    inputs: BenchmarkInputs,
    folds_path: Path,
    n_samples: int,
    k: int,
    task: str,
    split: str,
    export: Path | None = None,
    smallest_train: int | None = None,
):
    """Cross-validated fine-tuning on ``folds_path``, from the pretrained ``export`` (default: the
    pretraining stage's; unless the recipe's
    ``finetune.from_pretrained`` is false: then from scratch, the same model settings). With
    ``finetune.evaluations`` > 0 a validation part is carved from each training part by the split
    rule and the best evaluation is exported; with 0 every training sample trains and the last
    step is exported. ``smallest_train``: samples in the smallest training part of the folds
    (default: the mean part)."""
    from aam_ds.benchmark import report as reporting

    budget = inputs.recipe.finetune.for_table(n_samples)
    validation = {
        "grouped": ["data.split.kind=grouped", f"data.split.group_column={inputs.group_column}"],
        "stratified": ["data.split.kind=stratified", f"data.split.column={inputs.stratify_column or inputs.target}"],
    }
    fixed = [
        f"tracking.run_dir={inputs.out_dir / 'aam' / 'cv'}",
        "tracking.overwrite=true",
        "tracking.rich=false",
        f"data.metadata={inputs.metadata}",
        f"data.targets=[{inputs.target}]",
        f"data.split.folds_file={folds_path}",
        f"data.split.seed={inputs.seed}",
        f"schedule.seed={inputs.seed}",
        f"loss.task={task}",
        "loss.pairwise_weight=0",
        "loss.nucleotide_weight=0",
        *([f"model.pretrained={export or inputs.out_dir / 'aam' / 'pretrain' / 'model.pt'}"] if budget.from_pretrained else []),
        *(
            [f"schedule.best_metric={reporting.HEADLINE[task][0]}", *validation.get(split, [])]
            if budget.evaluations
            else ["data.split.val_fraction=0"]
        ),
    ]
    train_samples = n_samples * (k - 1) / k
    return _stage_spec(inputs, fixed, budget, int(train_samples), max(budget.evaluations, 1), smallest_train)
