"""The benchmark report folder: ``report.md``, ``report.json``, out-of-fold predictions, PNG plots,
and the Rich progress display of the stages.

Files written to the output folder:

- ``report.json``: per model, pooled and per-fold metrics and wall time; the best classical
  baseline; whether AAM beats it on the headline metric (MAE for regression, AUC for
  classification); diagnostics (ASV-vector cosine similarity, held-out distance r); the recipe;
- ``report.md``: the same as readable tables;
- ``predictions_<model>.tsv``: out-of-fold predictions (the ``aam-ds evaluate`` format);
- ``predicted_vs_true.png`` (regression, one panel per model) or ``roc.png`` (classification);
- ``learning_curves.png``: pretraining losses and held-out distance r, and each fold's validation metric.

All models are scored on the samples every model predicted (the same IDs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sklearn.metrics import roc_curve

from aam_ds.evaluation.cross_validation import CrossValidation, fold_spread
from aam_ds.evaluation.predictions import write_predictions
from aam_ds.evaluation.scoring import score
from aam_ds.io_utils import atomic_path, atomic_write_json, atomic_write_text

HEADLINE = {"regression": ("mae", "min"), "classification": ("auc", "max")}
BASELINES = ("random forest", "linear (CLR)")
STAGES = ("data and folds", "random forest", "linear model (CLR)", "AAM pretraining", "AAM diagnostics", "AAM fine-tuning", "report")


class StageProgress:
    """A Rich progress bar over the benchmark's stages (fine-tuning counts one step per fold), with
    elapsed time and an ETA. Log lines printed meanwhile scroll above the bar."""

    def __init__(self, console: Any, folds: int, stages: Sequence[str] = STAGES):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("starting", total=len(stages) - 1 + folds)
        self.started = False

    def __enter__(self) -> "StageProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def stage(self, name: str) -> None:
        """Start stage ``name`` (the previous stage counts as done; AAM fine-tuning advances per fold instead)."""
        if self.started and name != "AAM fine-tuning":
            self.progress.advance(self.task)
        self.started = True
        self.progress.update(self.task, description=name)
        self.progress.console.log(f"benchmark stage: {name}")

    def fold(self, index: int) -> None:
        """Count fold ``index`` (0-based) of AAM fine-tuning as done and show the next."""
        self.progress.advance(self.task)
        self.progress.update(self.task, description=f"AAM fine-tuning, fold {index + 1}")


def shared_rows(models: dict[str, CrossValidation]) -> dict[str, np.ndarray]:
    """Rows of each model's predictions that hold the samples every model predicted, in one order."""
    ids = [m.predictions.sample_ids for m in models.values()]
    common = sorted(set(ids[0]).intersection(*map(set, ids[1:])))
    rows = {}
    for name, model in models.items():
        row_of = {sample: i for i, sample in enumerate(model.predictions.sample_ids)}
        rows[name] = np.array([row_of[sample] for sample in common], dtype=np.int64)
    return rows


def model_scores(models: dict[str, CrossValidation], positive_class: str | None) -> dict[str, dict[str, Any]]:
    """Pooled and per-fold metrics of every model on the shared samples."""
    rows = shared_rows(models)
    scores = {}
    for name, cv in models.items():
        take = rows[name]
        predictions, truth, fold_of = cv.predictions.take(take), cv.truth[take], cv.fold_of[take]
        folds = [score(predictions.take(np.flatnonzero(fold_of == f)), truth[fold_of == f], positive_class) for f in np.unique(fold_of)]
        scores[name] = {
            "pooled": score(predictions, truth, positive_class),
            "folds": folds,
            "fold_mean_std": {k: list(v) for k, v in fold_spread(folds).items()},
        }
    return scores


def verdict(scores: dict[str, dict[str, Any]], task: str) -> dict[str, Any]:
    """The best classical baseline on the headline metric and whether AAM beats it."""
    metric, mode = HEADLINE[task]
    pick = min if mode == "min" else max
    best = pick(BASELINES, key=lambda name: scores[name]["pooled"][metric])
    aam, base = scores["AAM"]["pooled"][metric], scores[best]["pooled"][metric]
    return {
        "metric": metric,
        "best_baseline": best,
        "best_baseline_value": base,
        "aam_value": aam,
        "aam_beats_best_baseline": bool(aam < base if mode == "min" else aam > base),
    }


def write_report(
    out: Path,
    models: dict[str, CrossValidation],
    truth: np.ndarray,
    task: str,
    target: str,
    positive_class: str | None,
    seconds: dict[str, float],
    meta: dict[str, Any],
    metrics_files: Sequence[Path],
) -> dict[str, Any]:
    """Write every report file to ``out``; returns the report dict (``report.json``)."""
    for name, cv in models.items():
        write_predictions(out / f"predictions_{name.replace(' ', '_').replace('(', '').replace(')', '')}.tsv", cv.predictions)
    scores = model_scores(models, positive_class)
    report = {"target": target, "task": task, **meta, "seconds": seconds, "models": scores, "verdict": verdict(scores, task)}
    files = [
        _plot_predictions(out, models, task, target, positive_class),
        _plot_learning_curves(out / "learning_curves.png", metrics_files),
    ]
    report["files"] = [p.name for p in files if p is not None] + ["report.md", "report.json", "folds.tsv"]
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    return report


def track_report(spec: Any, out: Path, report: dict[str, Any]) -> None:
    """Keep the report in the tracking services ``spec`` turns on (W&B, MLflow; none: nothing happens),
    as one run named ``<tracking.name or report folder>-report``: the report files, plots and
    out-of-fold predictions as artifacts under ``benchmark/``, each model's pooled metrics as its summary."""
    from aam_ds.tracking import FanOutLogger, tracking_services

    tracking = spec.tracking.model_copy(update={"run_dir": out, "name": f"{spec.tracking.name or out.name}-report"})
    run = spec.model_copy(update={"tracking": tracking, "checkpoint": spec.checkpoint.model_copy(update={"resume": False})})
    services = tracking_services(run, out)
    if not services:
        return
    with FanOutLogger(services) as log:
        log.start(run, 0, {"stage": "benchmark report", "target": report["target"], "task": report["task"]})
        log.log_artifacts([out / name for name in report["files"]] + sorted(out.glob("predictions_*.tsv")), "benchmark")
        log.finish(
            {
                f"{model}/{metric}": value
                for model, scores in report["models"].items()
                for metric, value in scores["pooled"].items()
                if isinstance(value, (int, float))
            }
        )


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: :func:`summary_markdown`, then the recipe (JSON)."""
    return summary_markdown(report) + "\n".join(["", "Recipe:", "", "```json", json.dumps(report["recipe"], indent=1), "```", ""])


def summary_markdown(report: dict[str, Any]) -> str:
    """The comparison table, the verdict and the diagnostics (what the console shows at the end)."""
    task, metrics = report["task"], (("mae", "rmse", "r2") if report["task"] == "regression" else ("accuracy", "balanced_accuracy", "auc"))
    v = report["verdict"]
    lines = [
        f"# Benchmark: {report['target']} ({task})",
        "",
        f"{report['samples']} samples, {report['asvs']} ASVs; folds: {report['split']}; recipe `{report['recipe']['name']}` "
        f"({report['recipe']['description']}); AAM steps: pretraining {report['pretrain_steps']}, fine-tuning {report['finetune_steps']} per fold; "
        f"wall time {report['wall_time_s']:.0f} s.",
        "",
        "| model | " + " | ".join(f"{m} (pooled)" for m in metrics) + f" | {v['metric']} fold mean ± std | seconds |",
        "|---|" + "---:|" * (len(metrics) + 2),
    ]
    for name, s in report["models"].items():
        mean, std = s["fold_mean_std"][v["metric"]]
        cells = " | ".join(f"{s['pooled'][m]:.3f}" for m in metrics)
        lines.append(f"| {name} | {cells} | {mean:.3f} ± {std:.3f} | {report['seconds'].get(name, '')} |")
    lines += [
        "",
        f"Best classical baseline on {v['metric']}: **{v['best_baseline']}** ({v['best_baseline_value']:.3f}); "
        f"AAM {v['aam_value']:.3f}: **{'AAM wins' if v['aam_beats_best_baseline'] else 'AAM loses'}**.",
        "",
    ]
    weights = report.get("probe_ensemble_weights")
    if weights:
        lines += [
            "AAM is a probe ensemble (`model.probe_ensemble_folds`): the fine-tuned network averaged with a linear probe on the "
            "pretrained embeddings; the network's share per fold, chosen by inner CV within each fold's training samples: "
            + " / ".join(f"{w:g}" for w in weights)
            + ". `AAM fine-tuned network` is the network alone.",
            "",
        ]
    diag = report.get("diagnostics", {})
    if diag:
        lines.append(
            "Diagnostics of the pretrained model (held-out samples): "
            + ", ".join(f"{k} {val:.3f}" for k, val in diag.items())
            + " (asv_cosine: mean pairwise cosine similarity of ASV vectors; near 1 = collapsed)."
        )
    return "\n".join(lines) + "\n"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _plot_predictions(out: Path, models: dict[str, CrossValidation], task: str, target: str, positive_class: str | None) -> Path:
    """Predicted vs true per model (regression) or the ROC curves of all models (binary classification)."""
    rows = shared_rows(models)
    if task == "regression":
        fig = Figure(figsize=(4 * len(models), 4))
        for k, (name, cv) in enumerate(models.items()):
            ax = fig.add_subplot(1, len(models), k + 1)
            y, p = cv.truth[rows[name]], cv.predictions.values[rows[name]]
            ax.scatter(y, p, s=6, alpha=0.5)
            low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
            ax.plot([low, high], [low, high], "k--", linewidth=1)
            ax.set(title=f"{name}: MAE {np.abs(p - y).mean():.2f}", xlabel=f"true {target}", ylabel=f"predicted {target}" if k == 0 else "")
        return _save(fig, out / "predicted_vs_true.png")
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, cv in models.items():
        classes = list(cv.predictions.class_names)
        positive = positive_class or classes[-1]
        y = cv.truth[rows[name]] == positive
        p = cv.predictions.probabilities[rows[name], classes.index(positive)]
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {score(cv.predictions.take(rows[name]), cv.truth[rows[name]], positive_class)['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{target}: ROC, out of fold")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out / "roc.png")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot_learning_curves(path: Path, metrics_files: Sequence[Path]) -> Path | None:
    """Left: pretraining training loss and held-out distance r by step; right: each fold's validation metric."""
    pretrain, folds = _read_jsonl(metrics_files[0]), [_read_jsonl(p) for p in metrics_files[1:]]
    if not pretrain and not any(folds):
        return None
    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot(1, 2, 1)
    train = [(r["step"], r["metrics"]["loss"]) for r in pretrain if r["kind"] == "train"]
    if train:
        ax.plot(*zip(*train), label="training loss")
    evals = [(r["step"], r["metrics"]["distance_r"]) for r in pretrain if r["kind"] == "eval" and "distance_r" in r["metrics"]]
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out distance r")
    ax.set(xlabel="step", title="pretraining")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    for f, records in enumerate(folds):
        evals = [(r["step"], r["metrics"]) for r in records if r["kind"] == "eval"]
        name = next((m for m in ("mae", "auc") if evals and m in evals[0][1]), None)
        if name:
            ax.plot([s for s, _ in evals], [m[name] for _, m in evals], "o-", markersize=3, label=f"fold {f} val {name}")
    ax.set(xlabel="step", title="fine-tuning: validation, a part of each fold's\ntraining samples (not its test samples)")
    ax.legend(fontsize=7)
    return _save(fig, path)
