"""`aam-ds benchmark`: baselines and AAM on the same folds, the report folder, recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from aam_ds.benchmark.recipe import BUDGETS, RECIPE_DIR, flatten, load_recipe
from aam_ds.data.metadata import align_metadata, load_metadata
from aam_ds.data.table import load_table
from aam_ds.errors import AamInputError
from aam_ds.evaluation.folds import draw_folds, train_test_pairs
from aam_ds.evaluation.linear_baseline import clr, cross_validate_linear


def test_shipped_recipes_load_and_give_valid_specs():
    from aam_ds.spec import load_spec

    for budget in BUDGETS:
        recipe = load_recipe(budget)
        assert recipe.pretrain is not None and recipe.finetune.from_pretrained  # shipped recipes pretrain
        for stage in (recipe.pretrain, recipe.finetune):
            spec = load_spec(None, recipe.stage_spec(stage))  # every field is a run-spec field
            assert stage.min_steps <= stage.steps(10, 32) <= stage.max_steps
            assert spec.data.max_asvs == recipe.shared["data"]["max_asvs"]  # fine-tuning reads as many ASVs as pretraining
    assert load_recipe("standard").finetune.steps(2000, 32) == 1250  # 20 epochs of 2,000 samples


def test_the_wheel_carries_the_budget_recipes(tmp_path):
    """An installed package (a wheel, the container) finds ``--budget standard``: the recipes are
    package data, and ``configs/benchmark`` of the repository is the same folder."""
    import shutil
    import zipfile
    from pathlib import Path

    root, source = Path(__file__).resolve().parents[1], tmp_path / "source"  # a copy: setuptools writes build/ beside pyproject.toml
    shutil.copytree(root / "aam_ds", source / "aam_ds", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_CACHE_DIR": str(tmp_path / "pip-cache")},
    )
    [wheel] = tmp_path.glob("aam_ds-*.whl")
    shipped = {Path(name).name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("aam_ds/benchmark/recipes/")}
    assert shipped == {f"{budget}.yaml" for budget in BUDGETS}
    assert (root / "configs" / "benchmark").resolve() == RECIPE_DIR


def test_small_tables_take_the_recipes_small_table_variant(tmp_path):
    """Standard recipe: under 500 samples pretraining freezes the nucleotide encoder, drops the
    masked-nucleotide loss and runs at least 200 steps; from 500 samples on the stage is unchanged.
    A small_table with unknown fields is refused."""
    from aam_ds.spec import load_spec

    recipe = load_recipe("standard")
    small, large = recipe.pretrain.for_table(87), recipe.pretrain.for_table(2537)
    assert large is recipe.pretrain and small.min_steps == 200 and small.max_steps == large.max_steps
    assert small.steps(87, 32) == 200 and large.steps(2537, 32) == 397
    small_spec, large_spec = (load_spec(None, recipe.stage_spec(stage)) for stage in (small, large))
    assert small_spec.model.freeze_sequence_encoder and small_spec.loss.nucleotide_weight == 0
    assert not large_spec.model.freeze_sequence_encoder and large_spec.loss.nucleotide_weight > 0
    assert large_spec.loss.mask_sample_path  # the sample path reads the masked copies (docs/benchmarks.md, session 7)
    assert small_spec.optim.lr == large_spec.optim.lr and small_spec.model.preset == large_spec.model.preset  # merged, not replaced
    small_tune, large_tune = (load_spec(None, recipe.stage_spec(recipe.finetune.for_table(n))) for n in (87, 2537))
    assert small_tune.model.probe_ensemble_folds == 3 and large_tune.model.probe_ensemble_folds == 0  # the export is a probe ensemble
    raw = yaml.safe_load((RECIPE_DIR / "standard.yaml").read_text())
    raw["pretrain"]["small_table"]["lr"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(AamInputError, match="small_table needs"):
        load_recipe(str(bad))


def test_a_bad_recipe_is_refused_with_its_path(tmp_path):
    with pytest.raises(AamInputError, match="no recipe file"):
        load_recipe(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: {epochs: 1}\n")
    with pytest.raises(AamInputError, match="bad.yaml"):
        load_recipe(str(bad))
    scratch = yaml.safe_load((RECIPE_DIR / "quick.yaml").read_text()) | {"pretrain": None}
    bad.write_text(yaml.safe_dump(scratch))
    with pytest.raises(AamInputError, match="no pretrain stage but finetune.from_pretrained is true"):
        load_recipe(str(bad))
    scratch["finetune"]["from_pretrained"] = False
    bad.write_text(yaml.safe_dump(scratch))
    assert load_recipe(str(bad)).pretrain is None


def test_flatten_gives_set_overrides():
    assert flatten({"data": {"augment": {"asv_dropout": 0.2}, "targets": ["age"]}, "model": {"preset": "tiny"}}) == [
        "data.augment.asv_dropout=0.2",
        "data.targets=[age]",
        "model.preset=tiny",
    ]


def test_linear_baseline_learns_the_demo_age(demo_paths):
    table = load_table(demo_paths.table)
    metadata = align_metadata(load_metadata(demo_paths.metadata), table.sample_ids, "demo")
    np.testing.assert_allclose(clr(table).sum(axis=1), 0.0, atol=1e-9)
    truth = metadata["age"].to_numpy(float)
    folds = train_test_pairs(draw_folds(metadata, 5, "grouped", 0, "subject"), len(truth))
    cv = cross_validate_linear(table, "age", truth, folds)
    assert cv.pooled["r2"] > 0.3  # the demo composition depends on age
    assert np.isfinite(cv.predictions.values).all()


@pytest.mark.slow
def test_benchmark_quick_end_to_end_on_demo_data(demo_paths, tmp_path):
    out = tmp_path / "bench"
    # as a user runs it: its own process (and its own peak memory), the CLI's exit status
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aam_ds.cli",
            "benchmark",
            "--table",
            str(demo_paths.table),
            "--tree",
            str(demo_paths.tree),
            "--metadata",
            str(demo_paths.metadata),
            "--target",
            "age",
            "--split",
            "grouped",
            "--group-column",
            "subject",
            "--budget",
            "quick",
            "--out-dir",
            str(out),
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--set",
            "model.probe_ensemble_folds=2",  # the standard recipe's small-table export, with fewer inner folds
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "benchmark stage: AAM fine-tuning" in result.stdout and "report.md" in result.stdout
    ending = result.stdout[result.stdout.index("# Benchmark: age") :]  # the console ends with the table and the verdict, not the recipe
    assert "Best classical baseline on mae" in ending and "Recipe:" not in ending and "Recipe:" in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    for name in ("report.md", "report.json", "folds.tsv", "predicted_vs_true.png", "learning_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert set(report["models"]) == {"random forest", "linear (CLR)", "AAM linear probe", "AAM fine-tuned network", "AAM"}
    assert len(report["probe_ensemble_weights"]) == 5 and all(0 <= w <= 1 for w in report["probe_ensemble_weights"])
    assert "AAM is a probe ensemble" in ending
    ids = {}
    for path in out.glob("predictions_*.tsv"):
        ids[path.name] = set(pd.read_csv(path, sep="\t", dtype={"sample_id": str})["sample_id"])
    assert len(ids) == 5 and len({frozenset(v) for v in ids.values()}) == 1  # every model scored the same samples
    folds = pd.read_csv(out / "folds.tsv", sep="\t", dtype={"sample_id": str})
    assert set(folds["sample_id"]) == next(iter(ids.values()))
    groups = load_metadata(demo_paths.metadata)["subject"]
    assert folds.assign(g=groups.reindex(folds["sample_id"]).to_numpy()).groupby("g")["fold"].nunique().max() == 1  # grouped
    assert report["verdict"]["best_baseline"] in ("random forest", "linear (CLR)")
    assert report["verdict"]["metric"] == "mae"
    assert {"asv_cosine", "asv_cosine_sequence", "distance_r"} <= set(report["diagnostics"])
    assert report["recipe"]["name"] == "quick"
    assert "AAM" in (out / "report.md").read_text()


def test_finetune_spec_starts_from_the_export_or_from_scratch(tmp_path):
    """The recipe's ``finetune.from_pretrained`` (the pretraining ablation): false fine-tunes the same
    model settings from scratch."""
    import dataclasses

    from aam_ds.benchmark.runner import BenchmarkInputs
    from aam_ds.benchmark.stages import aam_finetune_spec

    recipe = load_recipe("quick")
    folds = tmp_path / "folds.tsv"
    inputs = BenchmarkInputs(table=tmp_path / "t.biom", metadata=tmp_path / "m.tsv", target="age", out_dir=tmp_path, recipe=recipe)
    spec = aam_finetune_spec(inputs, folds, 100, 5, "regression", "random")
    assert spec.model.pretrained == tmp_path / "aam" / "pretrain" / "model.pt"
    scratch_recipe = dataclasses.replace(recipe, finetune=dataclasses.replace(recipe.finetune, from_pretrained=False))
    scratch = aam_finetune_spec(dataclasses.replace(inputs, recipe=scratch_recipe), folds, 100, 5, "regression", "random")
    assert scratch.model.pretrained is None
    assert scratch.model.preset == "tiny" and scratch.data.max_asvs == spec.data.max_asvs
    assert scratch.schedule.steps == spec.schedule.steps


def test_finetune_without_evaluations_trains_on_every_training_sample(tmp_path):
    import dataclasses

    from aam_ds.benchmark.runner import BenchmarkInputs
    from aam_ds.benchmark.stages import aam_finetune_spec

    recipe = load_recipe("quick")
    recipe = dataclasses.replace(recipe, finetune=dataclasses.replace(recipe.finetune, evaluations=0))
    inputs = BenchmarkInputs(
        table=tmp_path / "t.biom", metadata=tmp_path / "m.tsv", target="age", out_dir=tmp_path, recipe=recipe, group_column="subject"
    )
    spec = aam_finetune_spec(inputs, tmp_path / "folds.tsv", 100, 5, "regression", "grouped")
    assert spec.data.split.val_fraction == 0 and spec.schedule.best_metric is None


def test_stages_follow_the_recipe_and_a_given_export(tmp_path):
    """``--pretrained model.pt`` skips pretraining (the export is probed and fine-tuned); a recipe
    without pretraining skips the diagnostics too; a from-scratch recipe refuses an export."""
    import dataclasses

    from aam_ds.benchmark.runner import BenchmarkInputs, check_inputs, stages_of
    from aam_ds.benchmark.stages import aam_finetune_spec

    recipe = load_recipe("quick")
    export = tmp_path / "model.pt"
    export.write_bytes(b"")
    inputs = BenchmarkInputs(table=export, metadata=export, target="age", out_dir=tmp_path, recipe=recipe)
    assert "AAM pretraining" in stages_of(inputs) and "AAM diagnostics" in stages_of(inputs)
    given = dataclasses.replace(inputs, pretrained=export)
    assert "AAM pretraining" not in stages_of(given) and "AAM diagnostics" in stages_of(given)
    assert aam_finetune_spec(given, tmp_path / "folds.tsv", 100, 5, "regression", "random", export).model.pretrained == export
    scratch = dataclasses.replace(recipe, pretrain=None, finetune=dataclasses.replace(recipe.finetune, from_pretrained=False))
    assert {"AAM pretraining", "AAM diagnostics"}.isdisjoint(stages_of(dataclasses.replace(inputs, recipe=scratch)))
    with pytest.raises(AamInputError, match="fine-tunes from scratch"):
        check_inputs(dataclasses.replace(given, recipe=scratch))


def test_a_recipe_batch_larger_than_a_small_tables_training_part_shrinks_to_fit(tmp_path):
    """34 samples in 5 folds (27 train, the smallest part 26): the standard recipe's batch of 32 would
    not fill one step; it shrinks to the training part (pretraining: 5 % held out), keeps the epochs
    (more steps), and a batch the user set stays as given (the trainer then names the problem)."""
    from aam_ds.benchmark.runner import BenchmarkInputs
    from aam_ds.benchmark.stages import aam_finetune_spec, aam_pretrain_spec

    inputs = BenchmarkInputs(
        table=tmp_path / "t.biom", metadata=tmp_path / "m.tsv", target="BodySite", out_dir=tmp_path, recipe=load_recipe("standard")
    )
    big = aam_finetune_spec(inputs, tmp_path / "folds.tsv", 400, 5, "classification", "stratified", smallest_train=318)
    assert big.parallel.global_batch_size == 32  # large tables keep the recipe's batch
    small = aam_finetune_spec(inputs, tmp_path / "folds.tsv", 34, 5, "classification", "stratified", smallest_train=26)
    assert small.parallel.global_batch_size == small.parallel.micro_batch_size == 26
    assert small.schedule.steps >= inputs.recipe.finetune.min_steps
    pretrain = aam_pretrain_spec(inputs, 30)
    assert round(pretrain.data.split.val_fraction * 30) == 6  # at least 6 held out, so distance r has 15 pairs
    assert pretrain.parallel.global_batch_size == 23  # floor(30 x 0.8) - 1: a validation part of 6 leaves 24
    assert aam_pretrain_spec(inputs, 2000).data.split.val_fraction == 0.05
    given = BenchmarkInputs(**{**inputs.__dict__, "extra": ["parallel.micro_batch_size=32"]})
    assert (
        aam_finetune_spec(given, tmp_path / "folds.tsv", 34, 5, "classification", "stratified", smallest_train=26).parallel.micro_batch_size
        == 32
    )
