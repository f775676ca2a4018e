"""``aam-ds benchmark``: the classical baselines and AAM on exactly the same folds, one report folder.

Stages (a Rich progress display shows the stage, the fold and an ETA):

1. data and folds: the table (and ASV sequences), the metadata, the target; folds drawn by the
   split (grouped / stratified / random, seed) or read from ``--folds-file``; ``folds.tsv`` written;
2. baselines: a random forest on relative abundances and a ridge / logistic model on CLR
   abundances with its penalty chosen by inner CV (:mod:`aam_ds.evaluation.linear_baseline`);
3. AAM pretraining on every sample of the table, label-free (pairwise distance + masked
   nucleotides: no target is seen, so no fold leaks), steps from the recipe's epochs;
4. diagnostics of the pretrained model: mean pairwise cosine similarity of ASV vectors (a
   collapsed sequence path is near 1) and a linear probe (the linear model on the frozen sample
   embeddings, same folds);
5. AAM fine-tuning per fold (:func:`aam_ds.engine.crossval.cross_validate` on ``folds.tsv``),
   validation carved from each training part by the same split rule, best validation metric exported;
6. the report (:mod:`aam_ds.benchmark.report`), also kept by W&B / MLflow when the AAM stages' spec
   turns them on (``--set tracking.mlflow=...``).

Everything runs in this process (one rank, CPU or the first GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aam_ds.benchmark.recipe import Recipe
from aam_ds.benchmark.stages import aam_finetune_spec, aam_pretrain_spec
from aam_ds.distances.registry import needs_tree
from aam_ds.errors import AamInputError
from aam_ds.tracking import METRICS_FILE


@dataclass
class BenchmarkInputs:
    """What the user gives ``aam-ds benchmark`` (paths are files; ``split`` random / stratified / grouped)."""

    table: Path
    metadata: Path
    target: str
    out_dir: Path
    recipe: Recipe
    tree: Path | None = None
    sequences: Path | None = None
    task: str | None = None
    split: str | None = None
    group_column: str | None = None
    stratify_column: str | None = None
    folds_file: Path | None = None
    folds: int = 5
    seed: int = 0
    positive_class: str | None = None
    metric: str | None = None
    max_seq_len: int = 150
    cache_dir: Path | None = None
    extra: list[str] = field(default_factory=list)  # --set overrides for both AAM stages
    pretrained: Path | None = None  # an export to fine-tune instead of pretraining anew


def stages_of(inputs: BenchmarkInputs) -> list[str]:
    """The stages this benchmark runs, in order (:data:`aam_ds.benchmark.report.STAGES` less the skipped)."""
    from aam_ds.benchmark.report import STAGES

    skipped = set()
    if inputs.pretrained is not None or inputs.recipe.pretrain is None:
        skipped.add("AAM pretraining")
    if inputs.pretrained is None and inputs.recipe.pretrain is None:
        skipped.add("AAM diagnostics")
    return [stage for stage in STAGES if stage not in skipped]


def split_of(inputs: BenchmarkInputs, task: str) -> str:
    """The split kind: ``--split`` if given, else grouped (with a group column), stratified (classification) or random."""
    if inputs.split:
        return inputs.split
    return "grouped" if inputs.group_column else "stratified" if task == "classification" else "random"


def check_inputs(inputs: BenchmarkInputs) -> None:
    """Refuse (AamInputError) missing input files, a sharded dataset folder as ``--table`` (the baselines read the whole
    table in memory) and contradictory options before any work starts."""
    from aam_ds.data.table import refuse_sharded_folder  # biom: a slow import

    for flag, path in (
        ("--table", inputs.table),
        ("--metadata", inputs.metadata),
        ("--tree", inputs.tree),
        ("--sequences", inputs.sequences),
        ("--folds-file", inputs.folds_file),
        ("--pretrained", inputs.pretrained),
    ):
        if path is not None and not Path(path).exists():
            raise AamInputError(f"{flag} {path}", "file not found", "check the path")
    refuse_sharded_folder(inputs.table, f"--table {inputs.table}")
    if inputs.split == "grouped" and not inputs.group_column:
        raise AamInputError("--split grouped", "no group column given", "add --group-column COLUMN (e.g. host_subject_id)")
    if inputs.pretrained is not None and not inputs.recipe.finetune.from_pretrained:
        raise AamInputError(
            f"--pretrained {inputs.pretrained}",
            f"recipe {inputs.recipe.name} fine-tunes from scratch",
            "drop --pretrained, or use a recipe with finetune.from_pretrained: true",
        )
    if inputs.tree is None and needs_tree(inputs.metric, "--metric"):
        raise AamInputError(f"--metric {inputs.metric}", "UniFrac needs a phylogeny", "give --tree rooted-tree.qza, or --metric braycurtis")


def run_benchmark(inputs: BenchmarkInputs, progress: Any) -> dict[str, Any]:
    """Run every stage and write the report folder; returns the report (as in ``report.json``).

    ``progress``: a :class:`aam_ds.benchmark.report.StageProgress` (or anything with ``stage(name)``).
    """
    from aam_ds.benchmark import report as reporting
    from aam_ds.data.metadata import align_metadata, load_metadata
    from aam_ds.data.table import load_table, without_empty_samples
    from aam_ds.evaluation.cli import infer_task, truth_of
    from aam_ds.evaluation.folds import train_test_pairs, write_folds

    check_inputs(inputs)
    start = time.perf_counter()
    out = inputs.out_dir
    out.mkdir(parents=True, exist_ok=True)
    progress.stage("data and folds")
    table = without_empty_samples(load_table(inputs.table))
    metadata = align_metadata(load_metadata(inputs.metadata), table.sample_ids, str(inputs.table))
    task = inputs.task or infer_task(metadata, inputs.target)
    truth, class_names = truth_of(metadata, inputs.target, task)
    split = split_of(inputs, task)
    held_out, split_text = held_out_folds(inputs, metadata, table.sample_ids, split)
    folds_path = write_folds(out / "folds.tsv", table.sample_ids, held_out)
    pairs = train_test_pairs(held_out, len(truth))

    models, seconds = {}, {}
    progress.stage("random forest")
    models["random forest"], seconds["random forest"] = _timed(lambda: _random_forest(table, inputs, truth, pairs, class_names, task))
    progress.stage("linear model (CLR)")
    models["linear (CLR)"], seconds["linear (CLR)"] = _timed(lambda: _linear(table, inputs, truth, pairs, class_names))

    pretrain_spec, pretrain_s, diagnostics, export = _pretrained_model(
        inputs, table.sample_ids, truth, pairs, class_names, task, models, progress
    )
    finetune_spec = aam_finetune_spec(
        inputs, folds_path, len(truth), len(held_out), task, split, export, smallest_train=len(truth) - max(len(fold) for fold in held_out)
    )
    cv, finetune_s = _timed(lambda: _cross_validate(finetune_spec, progress))
    network, ensemble_weights = network_alone(out / "aam" / "cv", cv)
    if network is not None:
        models["AAM fine-tuned network"] = network
    models["AAM"] = cv
    seconds["AAM"] = round(pretrain_s + finetune_s, 1)
    progress.stage("report")
    facts = {
        "samples": len(truth),
        "asvs": len(table.asv_ids),
        "split": split_text,
        "folds": len(held_out),
        "pretrain_steps": pretrain_spec.schedule.steps if pretrain_spec else 0,
        "finetune_steps": finetune_spec.schedule.steps,
        "diagnostics": diagnostics,
        "probe_ensemble_weights": ensemble_weights,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    curves = [out / "aam" / "pretrain" / "metrics.jsonl"] + [
        out / "aam" / "cv" / f"fold{f}" / "metrics.jsonl" for f in range(len(held_out))
    ]
    report = reporting.write_report(
        out, models, truth, task, inputs.target, inputs.positive_class, seconds, {**input_facts(inputs), **facts}, curves
    )
    reporting.track_report(finetune_spec, out, report)
    return report


def _pretrained_model(
    inputs: BenchmarkInputs, sample_ids, truth, pairs, class_names, task: str, models: dict[str, Any], progress: Any
) -> tuple[Any, float, dict[str, float], Path | None]:
    """The pretraining stage (or the ``--pretrained`` export) and its diagnostics: the linear probe
    (added to ``models``) and the held-out distance r and ASV-vector cosines. Returns the pretraining
    spec (None when skipped), its seconds, the diagnostics and the export to fine-tune from."""
    pretrain_spec, pretrain_s, diagnostics, export = None, 0.0, {}, inputs.pretrained
    if "AAM pretraining" in stages_of(inputs):
        progress.stage("AAM pretraining")
        pretrain_spec = aam_pretrain_spec(inputs, len(truth))
        (pretrain_result, pretrain_s) = _timed(lambda: _pretrain(pretrain_spec))
        export, diagnostics = pretrain_result.export_path, pretrain_result.eval_metrics
    elif export is not None:
        diagnostics = last_evaluation(export.parent / METRICS_FILE)
    if export is not None:
        progress.stage("AAM diagnostics")
        models["AAM linear probe"] = linear_probe(export, inputs, sample_ids, truth, pairs, class_names, task)
        diagnostics = {
            k: v for k, v in diagnostics.items() if k in ("asv_cosine", "asv_cosine_sequence", "asv_cosine_pooled", "distance_r")
        }
    return pretrain_spec, pretrain_s, diagnostics, export


def last_evaluation(metrics_file: Path) -> dict[str, float]:
    """The metrics of the last evaluation recorded in a run's metrics.jsonl ({} without one)."""
    from aam_ds.tracking import read_metrics

    if not metrics_file.is_file():
        return {}
    evals = [record["metrics"] for record in read_metrics(metrics_file) if record["kind"] == "eval"]
    return evals[-1] if evals else {}


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _timed(fn) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 1)


def _random_forest(table, inputs: BenchmarkInputs, truth, pairs, class_names, task):
    from aam_ds.evaluation.rf_baseline import cross_validate_rf

    return cross_validate_rf(
        table,
        inputs.target,
        truth,
        pairs,
        class_names,
        inputs.recipe.rf_trees,
        inputs.seed,
        n_jobs=-1,
        positive_class=inputs.positive_class,
    )


def _linear(table, inputs: BenchmarkInputs, truth, pairs, class_names):
    from aam_ds.evaluation.linear_baseline import cross_validate_linear

    return cross_validate_linear(table, inputs.target, truth, pairs, class_names, inputs.seed, inputs.positive_class)


# --------------------------------------------------------------------------------------------
# folds, report facts and the AAM stages


def held_out_folds(inputs: BenchmarkInputs, metadata, sample_ids: list[str], split: str) -> tuple[list, str]:
    """The held-out sample positions of each fold (``--folds-file``, or drawn by the split rule) and
    the split as the report states it."""
    from aam_ds.evaluation.folds import draw_folds, read_folds

    if inputs.folds_file:
        return read_folds(inputs.folds_file, sample_ids), f"from {inputs.folds_file}"
    column = {"grouped": inputs.group_column, "stratified": inputs.stratify_column or inputs.target}.get(split)
    held_out = draw_folds(metadata, inputs.folds, split, inputs.seed, column)
    return held_out, f"{split} {len(held_out)}-fold" + (f" by {column}" if column else "") + f", seed {inputs.seed}"


def input_facts(inputs: BenchmarkInputs) -> dict[str, Any]:
    """What the report records of the inputs: files, the recipe and the user's overrides."""
    return {
        "table": str(inputs.table),
        "metadata": str(inputs.metadata),
        "tree": _str(inputs.tree),
        "sequences": _str(inputs.sequences),
        "pretrained": _str(inputs.pretrained),
        "recipe": inputs.recipe.as_dict(),
        "overrides": inputs.extra,
    }


def _pretrain(spec):
    from aam_ds.engine import trainer

    return trainer.pretrain(spec)


def _cross_validate(spec, progress: Any):
    from aam_ds.engine import crossval

    progress.stage("AAM fine-tuning")
    return crossval.cross_validate(spec, on_fold=progress.fold)


def network_alone(cv_dir: Path, cv) -> tuple[Any, list[float]]:
    """When every fold's export is a probe ensemble (``model.probe_ensemble_folds``): the fine-tuned
    networks' own out-of-fold predictions, pooled as ``cv`` (a CrossValidation) is, and each fold's
    share of the fine-tuned network; else ``(None, [])``."""
    import json

    from aam_ds.engine.crossval import pooled_fold_files
    from aam_ds.engine.probe_cv import ENSEMBLE_DIR, NETWORK_DIR, WEIGHT_FILE

    held_out = [np.flatnonzero(cv.fold_of == f) for f in range(int(cv.fold_of.max()) + 1)]
    ensembles = [cv_dir / f"fold{f}" / ENSEMBLE_DIR for f in range(len(held_out))]
    if not all((folder / WEIGHT_FILE).is_file() for folder in ensembles):
        return None, []
    pooled, files = cv.predictions, [folder / NETWORK_DIR / "predictions_test.tsv" for folder in ensembles]
    alone = pooled_fold_files(
        pooled.target, pooled.sample_ids, pooled.class_names, cv.truth, held_out, files, "AAM fine-tuned network (out of fold)"
    )
    return alone, [json.loads((folder / WEIGHT_FILE).read_text())["weight"] for folder in ensembles]


def linear_probe(export_path: Path, inputs: BenchmarkInputs, sample_ids: list[str], truth: np.ndarray, pairs, class_names, task: str):
    """The linear model (:func:`aam_ds.evaluation.linear_baseline.linear_model`) on the frozen
    pretrained sample embeddings, on the benchmark's folds: what the embedding carries."""
    from aam_ds.evaluation.cross_validation import cross_validate_estimator
    from aam_ds.evaluation.linear_baseline import linear_model
    from aam_ds.export import build_exported_model, load_export
    from aam_ds.inference.predict import prepare_inputs
    from aam_ds.prediction import embed_inputs

    export = load_export(export_path)
    prepared = prepare_inputs(export, inputs.table, inputs.sequences)
    embeddings = embed_inputs(build_exported_model(export), prepared)
    row_of = {s: i for i, s in enumerate(prepared.sample_ids)}
    features = np.zeros((len(sample_ids), embeddings.shape[1]))
    present = [i for i, s in enumerate(sample_ids) if s in row_of]
    features[present] = embeddings[[row_of[sample_ids[i]] for i in present]]
    return cross_validate_estimator(
        features,
        lambda: linear_model(task, inputs.seed),
        sample_ids,
        inputs.target,
        truth,
        pairs,
        class_names,
        inputs.positive_class,
        "linear probe on frozen AAM embeddings (out of fold)",
    )
