"""Fine-tuning in this process (one rank, tiny model, demo data): best-model selection and early
stopping on a validation metric, a frozen pretrained encoder with a weighted classification loss
and covariates, and the regression losses."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aam_ds.data.synthetic import demo_data
from aam_ds.engine import setup, steps, trainer
from aam_ds.errors import AamInputError
from aam_ds.export import load_export
from aam_ds.spec import load_spec
from aam_ds.tracking import read_metrics


def spec_for(cache: Path, run_dir: Path, **overrides):
    """A small, fast fine-tuning spec on the demo data (task loss only)."""
    settings = {
        "model.preset": "tiny",
        "data.max_asvs": 16,
        "data.max_seq_len": 48,
        "data.cache_dir": cache,
        "schedule.steps": 6,
        "schedule.warmup_steps": 0,
        "schedule.log_every": 1,
        "schedule.eval_every": 1000,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": 8,
        "parallel.zero_stage": 0,
        "loss.pairwise_weight": 0,
        "loss.nucleotide_weight": 0,
        "optim.lr": 0.003,
        "loss.task": "regression",
        "data.targets": "[age]",
        **overrides,
    }
    return load_spec(None, [f"{k}={v}" for k, v in settings.items()])


@pytest.fixture(scope="module", autouse=True)
def in_process_world():
    """These runs join a one-process world in the test process (it stays up: DeepSpeed caches its
    groups); the launch variables it set are removed afterwards, so that later subprocess launches
    do not try to join it but start worlds of their own."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def metadata(cache) -> pd.DataFrame:
    return pd.read_csv(demo_data(cache).metadata, sep="\t", comment="#", index_col=0)


@pytest.mark.parametrize("stage", [0, 2])
def test_diverging_run_stops_early_and_exports_its_best_evaluation(cache, metadata, tmp_path, stage):
    """A learning rate far too high makes validation worse; the run stops once patience runs out
    and the export (and its predictions) are those of the best evaluation, not the last step."""
    run_dir = tmp_path / "run"
    result = trainer.finetune(
        spec_for(
            cache,
            run_dir,
            **{
                "optim.lr": 0.3,
                "optim.grad_clip": 0,
                "schedule.steps": 40,
                "schedule.eval_every": 1,
                "parallel.zero_stage": stage,
                "schedule.best_metric": "mae",
                "schedule.early_stopping_patience": 3,
            },
        )
    )
    records = read_metrics(run_dir / "metrics.jsonl")
    evals = {r["step"]: r["metrics"]["mae"] for r in records if r["kind"] == "eval"}
    summary = [r for r in records if r["kind"] == "summary"][-1]["metrics"]
    best_step = min(evals, key=evals.get)
    last_step = max(evals)

    assert summary["stopped early"] == 1 and summary["last step"] == last_step < 40
    assert last_step == best_step + 3  # three evaluations without improvement
    assert load_export(run_dir / "model.pt").step == summary["exported step"] == best_step == result.best_step
    assert result.eval_metrics["mae"] == pytest.approx(evals[best_step])

    val = pd.read_csv(run_dir / "predictions_val.tsv", sep="\t", index_col=0)
    mae = (val["age"] - metadata.loc[val.index, "age"]).abs().mean()
    assert mae == pytest.approx(evals[best_step], rel=1e-4)  # the best step's weights made them
    assert abs(mae - evals[last_step]) > 1e-3


def test_best_metric_must_be_a_validation_metric(cache, tmp_path):
    with pytest.raises(AamInputError, match="'balanced_accuracy' is not a validation metric.*mae"):
        trainer.finetune(spec_for(cache, tmp_path / "run", **{"schedule.eval_every": 2, "schedule.best_metric": "balanced_accuracy"}))


def test_early_stopping_needs_a_metric_to_watch(cache, tmp_path):
    with pytest.raises(AamInputError, match="early_stopping_patience needs schedule.best_metric"):
        spec_for(cache, tmp_path, **{"schedule.early_stopping_patience": 2})


def test_frozen_pretrained_encoder_with_class_weights_and_covariates(cache, metadata, tmp_path):
    """From a pretraining export: encoder weights stay those of the export, the task head learns;
    validation reports balanced accuracy and AUC; val predictions carry every class probability."""
    pretrained = tmp_path / "pretrain"
    trainer.pretrain(
        spec_for(cache, pretrained, **{"loss.task": "none", "data.targets": "[]", "loss.nucleotide_weight": 1, "schedule.steps": 2})
    )
    run_dir = tmp_path / "tuned"
    result = trainer.finetune(
        spec_for(
            cache,
            run_dir,
            **{
                "model.pretrained": pretrained / "model.pt",
                "model.freeze_encoder": "true",
                "loss.task": "classification",
                "data.targets": "[body_site]",
                "data.covariates": "[subject]",
                "loss.class_weights": "true",
                "optim.lr": 0.01,
                "schedule.eval_every": 3,
                "schedule.best_metric": "balanced_accuracy",
            },
        )
    )
    before, after = load_export(pretrained / "model.pt"), load_export(run_dir / "model.pt")
    encoder = [k for k in before.state_dict if not k.startswith(("task_head.", "target_normalizer."))]
    head = [k for k in after.state_dict if k.startswith("task_head.")]
    assert encoder and head
    assert all(torch.equal(before.state_dict[k], after.state_dict[k]) for k in encoder)
    assert after.targets["covariate_names"] == ["subject"]
    assert {"accuracy", "balanced_accuracy", "auc"} <= set(result.eval_metrics)
    assert result.best_step in (3, 6)

    val = pd.read_csv(run_dir / "predictions_val.tsv", sep="\t", index_col=0)
    classes = sorted(metadata["body_site"].unique())
    assert [c for c in val.columns if c.startswith("prob_")] == [f"prob_{c}" for c in classes]
    assert np.allclose(val[[f"prob_{c}" for c in classes]].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_regression_losses_train(cache, tmp_path, loss):
    """Each regression loss trains: the training loss falls over the run and stays finite."""
    run_dir = tmp_path / loss
    result = trainer.finetune(spec_for(cache, run_dir, **{"loss.regression_loss": loss, "schedule.steps": 12}))
    assert load_export(run_dir / "model.pt").spec["loss"]["regression_loss"] == loss
    assert np.isfinite(result.train_losses).all()
    assert np.mean(result.train_losses[-3:]) < np.mean(result.train_losses[:3])


def test_encoder_learning_rate_scale_moves_the_pretrained_encoder_less(cache, tmp_path):
    """``optim.encoder_lr_scale``: the engine's optimizer has the head at optim.lr and the rest at the
    scaled rate (through the schedule), and the encoder moves away from the export less."""
    pretrained = tmp_path / "pretrain"
    trainer.pretrain(
        spec_for(cache, pretrained, **{"loss.task": "none", "data.targets": "[]", "loss.nucleotide_weight": 1, "schedule.steps": 2})
    )
    before = load_export(pretrained / "model.pt").state_dict
    moved = {}
    for scale in (1.0, 0.01):
        run_dir = tmp_path / f"scale{scale}"
        model, *_ = setup.build_model(
            spec_for(cache, run_dir, **{"model.pretrained": pretrained / "model.pt"}), _data(cache, run_dir), True
        )
        groups = steps.parameter_groups(model, 0.003, scale)
        if scale == 1.0:
            assert all(isinstance(p, torch.nn.Parameter) for p in groups)
        else:
            assert [g["lr"] for g in groups] == [0.003, pytest.approx(0.003 * scale)]
            assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters() if p.requires_grad}
        trainer.finetune(spec_for(cache, run_dir, **{"model.pretrained": pretrained / "model.pt", "optim.encoder_lr_scale": scale}))
        after = load_export(run_dir / "model.pt").state_dict
        moved[scale] = sum((after[k] - before[k]).abs().sum().item() for k in before if k.startswith("token_embedding."))
    assert 0 < moved[0.01] < 0.1 * moved[1.0]


def _data(cache: Path, run_dir: Path):
    from aam_ds.data.prepare import prepare_data

    return prepare_data(spec_for(cache, run_dir))
