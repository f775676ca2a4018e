"""Arguments and runner of ``aam-ds tune`` (wired in aam_ds/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aam_ds.cli_args import add_spec_arguments

EXAMPLE = """example (search space: one line per spec field):
  cat > space.yaml <<'EOF'
  optim.lr: {type: log, low: 1.0e-4, high: 1.0e-2}
  model.preset: {type: categorical, choices: [tiny, small]}
  EOF
  aam-ds tune --spec run.yaml --space space.yaml --trials 20 --storage sqlite:///tune.db
  torchrun --nproc_per_node 2 -m aam_ds.cli tune --spec run.yaml --space space.yaml --trials 20 --storage sqlite:///tune.db

Run the same command again after a kill: finished trials are kept, the study continues.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``aam-ds tune`` to ``parser`` (its epilog is the worked example)."""
    parser.epilog = EXAMPLE
    add_spec_arguments(
        parser,
        "base run spec (YAML, TOML or JSON); default: the demo run",
        "override a base spec field, e.g. --set schedule.steps=200 (repeatable)",
    )
    parser.add_argument("--space", type=Path, required=True, help="search space YAML: spec field -> {type: float|int|log|categorical, ...}")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should hold (a resumed study runs the rest)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL, e.g. sqlite:///tune.db (default: sqlite:///<out-dir>/tune.db)")
    parser.add_argument("--study-name", default=None, help="study name in the storage (default: the spec file's name, or 'aam-ds')")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="trial run folders trial-<n>, best_spec.yaml, trials.tsv, plots (default: runs/tune-<study name>)",
    )
    parser.add_argument(
        "--stage",
        choices=("pretrain", "finetune"),
        default=None,
        help="what each trial trains (default: finetune when the spec sets loss.task, else pretrain)",
    )
    parser.add_argument("--metric", default=None, help="validation metric to optimise (default: schedule.best_metric, else loss)")
    parser.add_argument(
        "--direction",
        choices=("minimize", "maximize"),
        default=None,
        help="default: maximize accuracies, AUC, R2 and the metrics ending in _r, minimize the rest",
    )
    parser.add_argument(
        "--pruner",
        choices=("median", "none"),
        default="median",
        help="median: stop a trial whose validation metric is worse than the median of earlier trials at the same step",
    )
    parser.add_argument("--startup-trials", type=int, default=2, help="trials that run in full before pruning starts (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    parser.add_argument("--ds-config", type=Path, default=None, help="DeepSpeed JSON for every trial (default: generated from the spec)")


def run(args: argparse.Namespace) -> int:
    """Parse the base spec and the space on every rank, run the study, print rank 0's summary."""
    from aam_ds.engine.distributed import exit_process
    from aam_ds.spec import apply_overrides, build_spec, read_spec_file
    from aam_ds.tune.space import load_space
    from aam_ds.tune.study import TuneOptions, default_direction, run_study

    base = apply_overrides(read_spec_file(args.spec) if args.spec else {}, args.overrides)
    spec = build_spec(base, str(args.spec) if args.spec else "run spec")
    space = load_space(args.space, base)
    name = args.study_name or (args.spec.stem if args.spec else "aam-ds")
    out_dir = args.out_dir or Path("runs") / f"tune-{name}"
    metric = args.metric or spec.schedule.best_metric or "loss"
    options = TuneOptions(
        trials=args.trials,
        storage=args.storage or f"sqlite:///{(out_dir / 'tune.db').resolve()}",
        study_name=name,
        out_dir=out_dir,
        stage=args.stage or ("finetune" if spec.loss.task != "none" else "pretrain"),
        metric=metric,
        direction=args.direction or default_direction(metric),
        pruner=args.pruner,
        startup_trials=args.startup_trials,
        seed=args.seed,
        ds_config=args.ds_config,
    )
    summary = run_study(base, space, options)
    if summary is not None:
        print_summary(summary, options)
    if spec.parallel.effective_world_size() > 1:
        exit_process(0)  # several ranks: leave without gloo's exit-time aborts (as the training entry points do)
    return 0


def print_summary(summary, options) -> None:
    """Print the study's trial counts, the best trial and the files written."""
    from aam_ds.tune.study import format_params

    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.counts.items()))
    print(f"study {options.study_name} ({options.storage}): {counts}")
    if summary.best_number is not None:
        print(f"best trial {summary.best_number}: {options.metric} {summary.best_value:.6g} with {format_params(summary.best_params)}")
    print("wrote " + ", ".join(str(p) for p in summary.files))
