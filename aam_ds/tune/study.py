"""The Optuna study behind ``aam-ds tune``: each trial is a normal training run, pruned on its validation metric.

On every rank (one process, or several under torchrun / deepspeed)::

    run_study(base_raw, space, options) -> TuneSummary (rank 0) | None (other ranks)

Rank 0 alone talks to the storage: it opens the study (``load_if_exists``), asks for a trial
and broadcasts its number and parameters, so every rank trains the same trial spec. The trial is
an ordinary run (:func:`aam_ds.engine.trainer.pretrain` or ``finetune``) in
``<out_dir>/trial-<number>``, tracked like any run (metrics.jsonl, W&B, MLflow). After each
validation the trainer calls :class:`PruningReport`: rank 0 reports the metric to the trial and
asks the pruner, every rank receives the answer, and a pruned trial ends on every rank at once.

Resuming: ``--trials N`` is the number of finished trials the study should hold, so running the
same command again after a kill continues the study from its storage; trials that finished are
not repeated, and a trial the kill cut short (left RUNNING in the storage) is marked failed and its
parameters are queued to run again first (the new trial's user attribute ``retry_of`` names it). One ``aam-ds tune``
process group per study at a time.

At the end rank 0 writes ``best_spec.yaml`` (the base spec with the best trial's values, ready
for ``aam-ds pretrain|finetune --spec``), ``trials.tsv``, ``optimization_history.png`` and
``param_importances.png`` (with two or more completed trials).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aam_ds.engine.best import maximizes
from aam_ds.engine.distributed import DistContext, broadcast_from_main, check_on_main, init_distributed
from aam_ds.errors import AamInputError, notice
from aam_ds.io_utils import atomic_write_text
from aam_ds.spec import RunSpec, build_spec
from aam_ds.tune.space import SearchSpace, set_fields

RETRY_OF = "retry_of"  # user attribute of a trial that reruns the values of one a kill cut short


@dataclass(frozen=True)
class TuneOptions:
    """What ``aam-ds tune`` was asked: trial count, storage URL, study name, output folder, stage
    (pretrain / finetune), validation metric and direction (minimize / maximize), pruner
    (median / none) and its startup trials, sampler seed, DeepSpeed config."""

    trials: int
    storage: str
    study_name: str
    out_dir: Path
    stage: str
    metric: str
    direction: str
    pruner: str = "median"
    startup_trials: int = 2
    seed: int = 0
    ds_config: Path | None = None


@dataclass(frozen=True)
class TuneSummary:
    """Rank 0's outcome: trial counts by state, the best trial's number, value and parameters, files written."""

    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    files: list[Path]


def default_direction(metric: str) -> str:
    """``maximize`` for metrics where higher is better (accuracy, AUC, R2, names ending in ``_r``), else ``minimize``."""
    return "maximize" if maximizes(metric) else "minimize"


def check_options(base: RunSpec, options: TuneOptions) -> None:
    """Refuse, before any trial, a study that cannot select: no validation split, a bad trial count."""
    if options.trials < 1:
        raise AamInputError(f"--trials {options.trials}", "needs at least one trial", "give --trials 1 or more")
    if base.data.split.val_fraction <= 0:
        raise AamInputError(
            "data.split.val_fraction",
            "tuning selects on the validation metric, and there is no validation split",
            "set data.split.val_fraction > 0 (e.g. 0.2)",
        )


def open_study(options: TuneOptions) -> Any:
    """Rank 0: create or load the study; a trial left RUNNING by a kill is failed and queued again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # aam-ds prints one line per trial
    options.out_dir.mkdir(parents=True, exist_ok=True)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=options.startup_trials) if options.pruner == "median" else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            storage=options.storage,
            study_name=options.study_name,
            direction=options.direction,
            sampler=optuna.samplers.TPESampler(seed=options.seed),
            pruner=pruner,
            load_if_exists=True,
        )
    except Exception as exc:  # optuna's and SQLAlchemy's errors: a bad URL, an unwritable or foreign database
        raise AamInputError(
            f"--storage {options.storage}",
            f"the study cannot be opened ({str(exc).splitlines()[0][:300]})",
            "give an SQLAlchemy URL such as sqlite:///tune.db in a writable folder",
        ) from None
    stored = study.direction.name.lower()
    if stored != options.direction:
        raise AamInputError(
            f"--study-name {options.study_name}",
            f"the stored study {stored}s, this command would {options.direction[:-1]}",
            "use the same --metric / --direction as when the study was created, or a new --study-name",
        )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        notice(f"trial {trial.number} of study {options.study_name} was cut short; its parameters run again")
    return study


def finished_trials(study: Any) -> int:
    """Trials that count towards ``--trials``: completed, pruned, or failed by their own run (not cut short by a kill)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(1 for t in trials if t.state in done and t.number not in rerun)


def trial_spec(base: dict[str, Any], params: dict[str, Any], options: TuneOptions, number: int) -> RunSpec:
    """The trial's run spec: the base with its parameters, its own run folder ``<out_dir>/trial-<n>``."""
    run = {
        "tracking.run_dir": str(options.out_dir / f"trial-{number}"),
        "tracking.name": f"{options.study_name}-trial{number}",
        "tracking.overwrite": False,
        "checkpoint.resume": False,
        "checkpoint.dir": None,
    }
    return build_spec(set_fields(base, {**params, **run}), f"trial {number} of study {options.study_name}")


class PruningReport:
    """The trainer's evaluation callback: rank 0 reports ``metric`` to the trial and asks the pruner;
    every rank gets the answer and raises ``optuna.TrialPruned`` together."""

    def __init__(self, trial: Any, ctx: DistContext, metric: str):
        self.trial, self.ctx, self.metric = trial, ctx, metric
        self.pruned_at: int | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        import optuna

        if self.metric not in metrics:
            raise AamInputError(f"--metric {self.metric}", "is not a validation metric of this run", f"choose one of {sorted(metrics)}")
        prune = False
        if self.ctx.is_main:
            self.trial.report(float(metrics[self.metric]), step)
            prune = self.trial.should_prune()
        if broadcast_from_main(prune):
            self.pruned_at = step
            raise optuna.TrialPruned(f"pruned at step {step}: {self.metric} {metrics[self.metric]:.4g}")


def next_trial(study: Any, space: SearchSpace, options: TuneOptions) -> tuple[Any, tuple[int, dict[str, Any]] | None]:
    """Rank 0: the next trial and (number, params) to broadcast, or (None, None) when the study is full."""
    if finished_trials(study) >= options.trials:
        return None, None
    trial = study.ask()
    return trial, (trial.number, space.suggest(trial))


def run_trial(base: dict[str, Any], options: TuneOptions, ctx: DistContext, trial: Any, number: int, params: dict[str, Any]) -> None:
    """One trial on every rank: train, then (rank 0) tell the storage how it ended. A trial fails alone
    when its combination of values is refused by the run spec or its loss diverges; any other bad
    input fails it and ends the study."""
    import optuna

    from aam_ds.engine import trainer

    if ctx.world_size > 1:  # every rank says what it trains (the parameters rank 0 broadcast)
        print(f"[rank {ctx.rank}] trial {number}: {format_params(params)}", flush=True)
    report = PruningReport(trial, ctx, options.metric)
    stage = trainer.finetune if options.stage == "finetune" else trainer.pretrain
    state, outcome = optuna.trial.TrialState.FAIL, ""
    value, spec = None, None
    try:
        spec = trial_spec(base, params, options, number)
        value = stage(spec, options.ds_config, on_evaluate=report).eval_metrics.get(options.metric)
        if value is None or not math.isfinite(value):
            raise AamInputError(
                f"--metric {options.metric}",
                f"trial {number} ended without a finite value of it ({value})",
                "evaluate at least once (schedule.eval_every) and pick a metric the run reports",
            )
        state, outcome = optuna.trial.TrialState.COMPLETE, f"completed: {options.metric} {value:.6g}"
    except optuna.TrialPruned:
        state, outcome = optuna.trial.TrialState.PRUNED, f"pruned at step {report.pruned_at}"
    except AamInputError as exc:
        outcome = f"failed: {exc}"
        if spec is not None and exc.source != "schedule.max_nonfinite_steps":
            tell(ctx, trial, state, None, f"trial {number} {outcome}")
            raise
    where = spec.tracking.run_dir if spec is not None else "no run"
    tell(ctx, trial, state, value if state == optuna.trial.TrialState.COMPLETE else None, f"trial {number} {outcome} ({where})")


def tell(ctx: DistContext, trial: Any, state: Any, value: float | None, line: str) -> None:
    """Rank 0: record how the trial ended in the storage and print ``line``."""
    if ctx.is_main:
        trial.study.tell(trial, value, state=state)
        print(line, flush=True)


def format_params(params: dict[str, Any]) -> str:
    """``name=value`` pairs of trial parameters (floats to 4 significant digits)."""
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}" for name, value in params.items())


def run_study(base: dict[str, Any], space: SearchSpace, options: TuneOptions) -> TuneSummary | None:
    """Run trials until the study holds ``options.trials`` finished ones (call on every rank).
    Returns rank 0's :class:`TuneSummary`, None on other ranks."""
    base_spec = build_spec(base, "run spec")
    check_options(base_spec, options)
    ctx = init_distributed(base_spec.parallel.collective_timeout_s)
    holder: dict[str, Any] = {}
    check_on_main(ctx, lambda: holder.update(study=open_study(options)))
    study = holder.get("study")
    while True:
        trial, ask = next_trial(study, space, options) if ctx.is_main else (None, None)
        ask = broadcast_from_main(ask)
        if ask is None:
            break
        run_trial(base, options, ctx, trial, *ask)
    return summarize(study, base, options) if ctx.is_main else None


def summarize(study: Any, base: dict[str, Any], options: TuneOptions) -> TuneSummary:
    """Rank 0: best_spec.yaml, trials.tsv and the plots; the summary."""
    import optuna

    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    files = [out / "trials.tsv"]
    study.trials_dataframe().to_csv(files[0], sep="\t", index=False)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return TuneSummary(counts, None, None, {}, files)
    best = study.best_trial
    best_spec = set_fields(base, best.params)
    atomic_write_text(
        out / "best_spec.yaml",
        f"# best trial {best.number} of study {options.study_name}: {options.metric} "
        f"{best.value:.6g}\n" + yaml.safe_dump(best_spec, sort_keys=False),
    )
    files += [out / "best_spec.yaml", *write_plots(study, out, len(completed))]
    return TuneSummary(counts, best.number, best.value, dict(best.params), files)


def write_plots(study: Any, out: Path, completed: int) -> list[Path]:
    """optimization_history.png, and param_importances.png once two trials completed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots = {"optimization_history.png": optuna_plots.plot_optimization_history}
    if completed >= 2:
        plots["param_importances.png"] = optuna_plots.plot_param_importances
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of parameters that never varied
                notice(f"{name} not written: {exc}")
                continue
        figure = axes.figure
        figure.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(out / name)
    return written
