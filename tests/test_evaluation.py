"""Metrics, the predictions file, and `aam-ds evaluate` end to end on small hand-made data."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, mean_absolute_error, r2_score, roc_auc_score

from aam_ds.data.metadata import load_metadata
from aam_ds.errors import AamInputError
from aam_ds.evaluation.cli import add_evaluate_arguments, run_evaluate
from aam_ds.evaluation.metrics import classification_metrics, per_group_table, regression_metrics, worst_samples
from aam_ds.evaluation.predictions import Predictions, read_predictions, write_predictions
from aam_ds.evaluation.scoring import join_truth, scored_frame

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# regression metrics


def test_perfect_regression_has_zero_error_and_r2_one():
    y = np.array([18.0, 25.0, 40.0, 63.0])
    assert regression_metrics(y, y) == {"mae": 0.0, "rmse": 0.0, "r2": 1.0, "n": 4}


def test_constant_offset_gives_that_mae_and_rmse():
    y = np.array([18.0, 25.0, 40.0, 63.0, 30.0])
    m = regression_metrics(y, y + 2.5)
    assert m["mae"] == pytest.approx(2.5) and m["rmse"] == pytest.approx(2.5)
    assert m["r2"] == pytest.approx(1 - len(y) * 2.5**2 / np.sum((y - y.mean()) ** 2))


def test_regression_metrics_match_sklearn_on_random_values():
    rng = np.random.default_rng(0)
    y, p = rng.normal(30, 10, 50), rng.normal(30, 10, 50)
    m = regression_metrics(y, p)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
    assert m["r2"] == pytest.approx(r2_score(y, p))


# --------------------------------------------------------------------------------------------
# classification metrics


def test_binary_metrics_by_hand():
    # truth A A A B; P(B) .1 .2 .7 .8 -> predicted A A B B
    y = ["A", "A", "A", "B"]
    prob_b = np.array([0.1, 0.2, 0.7, 0.8])
    probs = np.stack([1 - prob_b, prob_b], axis=1)
    m = classification_metrics(y, probs, ["A", "B"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["auc"] == pytest.approx(1.0)  # the single B outranks every A
    assert m["f1"] == pytest.approx(2 / 3)  # B: tp 1, fp 1, fn 0
    assert classification_metrics(y, probs, ["A", "B"], positive_class="A")["f1"] == pytest.approx(0.8)  # tp 2, fp 0, fn 1


def test_binary_auc_counts_ranked_pairs():
    y = ["A", "A", "B", "B"]
    prob_b = np.array([0.1, 0.6, 0.4, 0.9])  # B scores (.4, .9) beat A scores (.1, .6) in 3 of 4 pairs
    m = classification_metrics(y, np.stack([1 - prob_b, prob_b], 1), ["A", "B"])
    assert m["auc"] == pytest.approx(0.75)
    inverted = classification_metrics(y, np.stack([prob_b, 1 - prob_b], 1), ["A", "B"])
    assert inverted["auc"] == pytest.approx(0.25)


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    classes = ["gut", "palm", "tongue"]
    y = np.array(classes)[rng.integers(0, 3, 60)]
    probs = rng.dirichlet(np.ones(3), 60)
    m = classification_metrics(y, probs, classes)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=classes))
    assert m["f1"] == pytest.approx(f1_score(y, np.array(classes)[probs.argmax(1)], average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean(np.array(classes)[probs.argmax(1)] == y))


def test_multiclass_auc_skips_a_class_absent_from_the_truth():
    y = ["a", "a", "b", "b"]
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    assert classification_metrics(y, probs, ["a", "b", "c"])["auc"] == pytest.approx(1.0)


def test_one_class_truth_has_undefined_auc():
    m = classification_metrics(["A", "A"], np.array([[0.9, 0.1], [0.4, 0.6]]), ["A", "B"])
    assert np.isnan(m["auc"]) and m["accuracy"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# per-group tables and worst samples


def _regression_predictions(ids, values, std=None, target="age"):
    return Predictions(target, list(ids), values=np.asarray(values, float), std=std)


def test_per_group_table_and_worst_samples():
    preds = _regression_predictions(["s1", "s2", "s3", "s4"], [11.0, 23.0, 30.0, 39.0])
    truth = np.array([10.0, 20.0, 30.0, 40.0])
    groups = pd.Series(["a", "a", "b", "b"], index=preds.sample_ids, name="site")
    scored = scored_frame(preds, truth, groups)
    table = per_group_table(scored, "site")
    assert list(table.index) == ["a", "b"]  # worst group first
    assert table.loc["a", "mae"] == pytest.approx(2.0) and table.loc["b", "mae"] == pytest.approx(0.5)
    assert table.loc["a", "bias"] == pytest.approx(2.0) and table.loc["b", "bias"] == pytest.approx(-0.5)
    assert table.loc["a", "rmse"] == pytest.approx(np.sqrt(5.0))
    assert list(worst_samples(scored, 2).index) == ["s2", "s1"]


def test_classification_scored_frame_ranks_least_confident_truth_worst():
    preds = Predictions("site", ["x", "y", "z"], probabilities=np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), class_names=("gut", "palm"))
    scored = scored_frame(preds, np.array(["gut", "gut", "palm"], dtype=object))
    assert scored["correct"].tolist() == [True, False, False]
    assert scored["prob_true"].tolist() == pytest.approx([0.9, 0.3, 0.4])
    assert list(worst_samples(scored, 1).index) == ["y"]


# --------------------------------------------------------------------------------------------
# predictions file


def test_predictions_round_trip(tmp_path):
    reg = _regression_predictions(["s1", "s2"], [30.5, 41.0], std=np.array([1.0, 2.0]))
    write_predictions(tmp_path / "r.tsv", reg)
    assert pd.read_csv(tmp_path / "r.tsv", sep="\t").columns.tolist() == ["sample_id", "age", "age_std"]
    back = read_predictions(tmp_path / "r.tsv", "age")
    assert back.task == "regression" and back.sample_ids == ["s1", "s2"]
    np.testing.assert_allclose(back.values, reg.values)
    np.testing.assert_allclose(back.std, reg.std)

    cls = Predictions("Subject", ["s1", "s2"], probabilities=np.array([[0.2, 0.8], [0.7, 0.3]]), class_names=("Control", "Patient"))
    write_predictions(tmp_path / "c.tsv", cls)
    frame = pd.read_csv(tmp_path / "c.tsv", sep="\t")
    assert frame.columns.tolist() == ["sample_id", "Subject", "prob_Control", "prob_Patient"]
    assert frame["Subject"].tolist() == ["Patient", "Control"]
    back = read_predictions(tmp_path / "c.tsv", "Subject")
    assert back.task == "classification" and back.class_names == ("Control", "Patient")
    np.testing.assert_allclose(back.probabilities, cls.probabilities)


@pytest.mark.parametrize(
    "text, task, problem",
    [
        ("sample_id\tbmi\ns1\t3\n", None, "no column 'age'"),
        ("sample_id\tage\ns1\t3\ns2\t\n", None, "missing or non-numeric"),
        ("sample_id\tage\ns1\t3\ns1\t4\n", None, "repeated sample IDs"),
        ("sample_id\tage\ns1\t3\n", "classification", "holds regression predictions"),
    ],
)
def test_bad_predictions_files_are_refused(tmp_path, text, task, problem):
    (tmp_path / "p.tsv").write_text(text)
    with pytest.raises(AamInputError, match=problem):
        read_predictions(tmp_path / "p.tsv", "age", task)


# --------------------------------------------------------------------------------------------
# joining the truth


def _metadata(tmp_path, text):
    (tmp_path / "m.tsv").write_text(text)
    return load_metadata(tmp_path / "m.tsv")


def test_join_truth_keeps_shared_samples_only(tmp_path):
    metadata = _metadata(tmp_path, "sample-id\tage\ns1\t30\ns2\t40\n")
    kept, truth, _ = join_truth(_regression_predictions(["s2", "s9", "s1"], [41.0, 5.0, 29.0]), metadata)
    assert kept.sample_ids == ["s2", "s1"] and truth.tolist() == [40.0, 30.0]


@pytest.mark.parametrize(
    "metadata_text, problem",
    [
        ("sample-id\tage\nq1\t30\nq2\t40\n", "no sample is in both"),
        ("sample-id\tbmi\ns1\t30\ns2\t40\n", "no such column"),
        ("sample-id\tage\ns1\t30\ns2\t\n", "missing"),
    ],
)
def test_join_truth_refuses_bad_metadata(tmp_path, metadata_text, problem):
    with pytest.raises(AamInputError, match=problem):
        join_truth(_regression_predictions(["s1", "s2"], [31.0, 39.0]), _metadata(tmp_path, metadata_text))


def test_join_truth_refuses_classes_the_model_does_not_know(tmp_path):
    metadata = _metadata(tmp_path, "sample-id\tsite\ns1\tgut\ns2\tskin\n")
    preds = Predictions("site", ["s1", "s2"], probabilities=np.array([[0.9, 0.1], [0.2, 0.8]]), class_names=("gut", "palm"))
    with pytest.raises(AamInputError, match="skin"):
        join_truth(preds, metadata)


# --------------------------------------------------------------------------------------------
# aam-ds evaluate, end to end


def _evaluate(argv):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args(argv))


def _assert_png(path):
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_evaluate_regression_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(40)]
    age = rng.uniform(18, 80, 40).round(1)
    site = np.where(np.arange(40) < 20, "north", "south")
    offset = np.where(site == "north", 3.0, -1.0)  # north over-predicted by 3 years, south under by 1
    pd.DataFrame({"sample-id": ids, "age": age, "site": site}).to_csv(tmp_path / "meta.tsv", sep="\t", index=False)
    write_predictions(tmp_path / "pred.tsv", _regression_predictions(ids, age + offset, std=np.full(40, 0.5)))

    assert (
        _evaluate(
            [
                "--predictions",
                str(tmp_path / "pred.tsv"),
                "--metadata",
                str(tmp_path / "meta.tsv"),
                "--target",
                "age",
                "--group-column",
                "site",
                "--out-dir",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    out = tmp_path / "eval"
    report = json.loads((out / "metrics.json").read_text())
    assert report["task"] == "regression" and report["metrics"]["n"] == 40
    assert report["metrics"]["mae"] == pytest.approx(2.0)  # half the samples off by 3, half by 1
    groups = pd.read_csv(out / "per_group.tsv", sep="\t", index_col=0)
    assert groups.loc["north", "bias"] == pytest.approx(3.0) and groups.loc["south", "bias"] == pytest.approx(-1.0)
    worst = pd.read_csv(out / "worst_samples.tsv", sep="\t")
    assert (worst["site"] == "north").all()
    for png in ("pred_vs_true.png", "residuals.png"):
        _assert_png(out / png)


def test_evaluate_classification_end_to_end(tmp_path):
    ids = [f"s{i}" for i in range(12)]
    truth = ["Control"] * 6 + ["Patient"] * 6
    prob_patient = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.35, 0.55, 0.8, 0.9, 0.95, 0.99])
    pd.DataFrame({"sample-id": ids, "Subject": truth}).to_csv(tmp_path / "meta.tsv", sep="\t", index=False)
    preds = Predictions("Subject", ids, probabilities=np.stack([1 - prob_patient, prob_patient], 1), class_names=("Control", "Patient"))
    write_predictions(tmp_path / "pred.tsv", preds)

    assert _evaluate(["--predictions", str(tmp_path / "pred.tsv"), "--metadata", str(tmp_path / "meta.tsv"), "--target", "Subject"]) == 0
    out = tmp_path / "pred.tsv.eval"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(9 / 12)  # two controls above 0.5, one patient at 0.35
    assert metrics["auc"] == pytest.approx(roc_auc_score(np.array(truth) == "Patient", prob_patient))
    _assert_png(out / "confusion_matrix.png")
    assert len(pd.read_csv(out / "worst_samples.tsv", sep="\t")) == 12


def test_evaluate_refuses_a_missing_group_column(tmp_path):
    pd.DataFrame({"sample-id": ["s1", "s2"], "age": [30, 40]}).to_csv(tmp_path / "meta.tsv", sep="\t", index=False)
    write_predictions(tmp_path / "pred.tsv", _regression_predictions(["s1", "s2"], [31.0, 39.0]))
    with pytest.raises(AamInputError, match="--group-column site"):
        _evaluate(
            [
                "--predictions",
                str(tmp_path / "pred.tsv"),
                "--metadata",
                str(tmp_path / "meta.tsv"),
                "--target",
                "age",
                "--group-column",
                "site",
            ]
        )
