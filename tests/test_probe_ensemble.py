"""The probe ensemble (``model.probe_ensemble_folds``): a fine-tuned model averaged with a linear
probe on its pretrained model's embeddings, the weight chosen by inner cross-validation. Real
fine-tunings in this process (one rank, tiny model, demo data), a real export, ``aam-ds predict``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aam_ds.engine import trainer
from aam_ds.engine.distributed import free_port
from aam_ds.engine.probe_cv import WEIGHTS, choose_weight, fit_probe, inner_folds, probe_outputs
from aam_ds.errors import AamInputError, AamNotice
from aam_ds.export import build_exported_model, load_export
from aam_ds.inference.onnx import export_onnx
from aam_ds.prediction import embed_inputs, predict_split, rows_inputs
from tests.test_engine_train import checked, launch, run_args
from tests.test_finetune import spec_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def in_process_world():
    """As tests/test_finetune.py: the one-process world's launch variables are removed afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def predicted_by_cli(model: Path, table: Path, out: Path) -> pd.DataFrame:
    """``aam-ds predict --model model --table table`` in its own process, read back."""
    cmd = [sys.executable, "-m", "aam_ds.cli", "predict", "--model", str(model), "--table", str(table), "--out", str(out)]
    checked(launch(cmd, timeout=300))
    return pd.read_csv(out, sep="\t", index_col=0)


@pytest.fixture(scope="module")
def pretrained(cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrain")
    trainer.pretrain(
        spec_for(cache, run_dir, **{"loss.task": "none", "data.targets": "[]", "loss.pairwise_weight": 1, "schedule.steps": 4})
    )
    return run_dir / "model.pt"


@pytest.mark.slow
@pytest.mark.parametrize("task, target", [("classification", "body_site"), ("regression", "age")], ids=["classification", "regression"])
def test_the_export_predicts_the_weighted_mean_of_the_fine_tuned_model_and_the_probe(cache, demo, pretrained, tmp_path, task, target):
    """Inner runs exist (with a smaller batch where theirs would not fit), the chosen weight is on the grid, the run's test predictions (and
    ``aam-ds predict`` on the export) equal w x the fine-tuned network + (1 - w) x the probe
    refitted here on the pretrained embeddings of the training samples."""
    run_dir = tmp_path / "tuned"
    overrides = {
        "model.pretrained": pretrained,
        "model.probe_ensemble_folds": 2,
        "loss.task": task,
        "data.targets": f"[{target}]",
        "data.split.test_fraction": 0.2,
        "schedule.steps": 8,
    }
    if task == "regression":  # ~54 training samples: an inner fold's ~27 cannot fill the batch of 32, which shrinks to fit
        overrides |= {"data.split.test_fraction": 0.72, "parallel.micro_batch_size": 32}
    spec = spec_for(cache, run_dir, **overrides)
    trainer.finetune(spec)
    export = load_export(run_dir / "model.pt")
    weight = export.probe["weight"]
    assert weight in WEIGHTS and export.probe["inner_folds"] == 2
    assert all((run_dir / "probe_ensemble" / f"inner{j}" / "model.pt").is_file() for j in range(2))
    assert not any((run_dir / "probe_ensemble" / f"inner{j}" / "checkpoints").exists() for j in range(2))  # deleted once used

    from aam_ds.data.prepare import prepare_data

    data = prepare_data(spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"run_dir": run_dir})}))
    train_rows, test_rows = data.splits["train"], data.splits["test"]
    assert len(inner_folds(spec, data, train_rows, 2)) == 2
    inner0 = run_dir / "probe_ensemble" / "inner0"
    first_inner = len((inner0 / "splits" / "train.txt").read_text().split())  # inner fold 0's training samples (its val carved off)
    inner_batch = load_export(inner0 / "model.pt").spec["parallel"]["micro_batch_size"]
    assert inner_batch == (8 if task == "classification" else first_inner) and (task == "classification" or first_inner < 32)
    pretrained_model = build_exported_model(load_export(pretrained))
    probe = fit_probe(embed_inputs(pretrained_model, rows_inputs(data, train_rows), 8), data.targets[train_rows], data, 0)
    expected_probe = probe_outputs(probe, embed_inputs(pretrained_model, rows_inputs(data, test_rows), 8), data)
    network = predict_split(build_exported_model(export, ensemble=False), data, "test")
    written = pd.read_csv(run_dir / "predictions_test.tsv", sep="\t", index_col=0)
    if task == "classification":
        expected = weight * network[0].probabilities + (1 - weight) * expected_probe
        columns = [f"prob_{name}" for name in data.class_names]
    else:
        expected = weight * network[0].values[:, None] + (1 - weight) * expected_probe
        columns = [target]
    np.testing.assert_allclose(written.loc[network[0].sample_ids, columns].to_numpy(), expected, rtol=1e-5, atol=1e-5)

    predicted = predicted_by_cli(run_dir / "model.pt", demo.table, tmp_path / "predicted.tsv")
    np.testing.assert_allclose(predicted.loc[written.index, columns].to_numpy(), written[columns].to_numpy(), atol=1e-5)
    with pytest.raises(AamInputError, match="probe ensemble"):
        export_onnx(run_dir / "model.pt", tmp_path / "model.onnx")


def test_the_weight_follows_the_better_model():
    """Log-loss and MAE pick the model that is right; ties keep the fine-tuned model's larger share."""

    class Classes:
        class_names = ("a", "b")

    class Values:
        class_names = ()

    truth = np.array([0, 1, 1, 0])
    right = np.eye(2)[truth] * 0.9 + 0.05
    wrong = right[:, ::-1]
    assert choose_weight(right, wrong, truth, Classes, "mae")[0] == 1.0
    assert choose_weight(wrong, right, truth, Classes, "mae")[0] == 0.0
    assert choose_weight(right, right, truth, Classes, "mae")[0] == 1.0
    values = np.array([[1.0], [2.0], [3.0]])
    weight, losses = choose_weight(values + 1, values - 1, values[:, 0], Values, "mae")
    assert weight == 0.5 and losses[5] == pytest.approx(0.0) and len(losses) == len(WEIGHTS)


def test_a_probe_ensemble_needs_a_pretrained_model_and_two_folds(cache, tmp_path):
    with pytest.raises(AamInputError, match="model.pretrained is not set"):
        trainer.finetune(spec_for(cache, tmp_path / "a", **{"model.probe_ensemble_folds": 3}))
    with pytest.raises(AamInputError, match="1 inner fold"):
        trainer.finetune(spec_for(cache, tmp_path / "b", **{"model.probe_ensemble_folds": 1}))


def test_training_samples_too_few_for_the_inner_folds_keep_the_fine_tuned_network(cache, pretrained, tmp_path):
    """20 inner folds of 30 training samples in 3 classes cannot be stratified: the export stays
    the network (no probe), with a notice and weight.json saying why."""
    run_dir = tmp_path / "tuned"
    overrides = {"model.pretrained": pretrained, "model.probe_ensemble_folds": 20, "loss.task": "classification"}
    overrides |= {"data.targets": "[body_site]", "data.split.test_fraction": 0.9, "data.split.val_fraction": 0, "schedule.steps": 2}
    with pytest.warns(AamNotice, match="no probe ensemble"):
        trainer.finetune(spec_for(cache, run_dir, **overrides))
    assert load_export(run_dir / "model.pt").probe is None
    record = json.loads((run_dir / "probe_ensemble" / "weight.json").read_text())
    assert record["weight"] == 1.0 and "members" in record["skipped"]
    kept = run_dir / "probe_ensemble" / "finetuned" / "predictions_test.tsv"
    assert kept.read_bytes() == (run_dir / "predictions_test.tsv").read_bytes()


@pytest.mark.slow
def test_two_ranks_build_the_same_probe_ensemble_that_predict_serves(cache, demo, pretrained, tmp_path):
    """torchrun, 2 ranks (gloo): every rank trains the inner folds, rank 0 fits and writes; the run's
    validation predictions are what ``aam-ds predict`` makes of the export in one process."""
    run_dir = tmp_path / "tuned"
    args = run_args(
        run_dir,
        cache,
        **{
            "schedule.steps": 4,
            "parallel.zero_stage": 0,
            "parallel.collective_timeout_s": 120,
            "loss.pairwise_weight": 0,
            "loss.nucleotide_weight": 0,
            "loss.task": "classification",
            "data.targets": "[body_site]",
            "model.pretrained": pretrained,
            "model.probe_ensemble_folds": 2,
        },
    )
    cmd = [
        str(ROOT / ".venv" / "bin" / "torchrun"),
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(ROOT / "launch" / "finetune.py"),
    ]
    checked(launch(cmd + args, timeout=300))
    assert load_export(run_dir / "model.pt").probe["inner_folds"] == 2
    assert all((run_dir / "probe_ensemble" / f"inner{j}" / "model.pt").is_file() for j in range(2))
    assert not any((run_dir / "probe_ensemble" / f"inner{j}" / "checkpoints").exists() for j in range(2))  # deleted once used
    written = pd.read_csv(run_dir / "predictions_val.tsv", sep="\t", index_col=0)
    columns = [c for c in written.columns if c.startswith("prob_")]
    predicted = predicted_by_cli(run_dir / "model.pt", demo.table, tmp_path / "predicted.tsv").loc[written.index, columns]
    np.testing.assert_allclose(predicted.to_numpy(), written[columns].to_numpy(), atol=1e-5)
