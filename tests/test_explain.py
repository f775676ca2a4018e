"""``aam-ds explain`` on a model fine-tuned on age within this module (real trainer, real export,
the CLI in a fresh process), scored against the generator's truth.tsv.

The data is the demo generator's SPARSE_AGE design (seed 0): only the ASVs of a few clades (30 %
of the tips) respond to age, every other ASV's true effect is 0. The model (tiny, 60 steps) holds
out half the *subjects* (a random split puts a subject's samples on both sides, and the model then
recognises subjects instead of reading age). Measured here, Spearman rho of each method's per-ASV
score over the 150 held-out samples with the true |age effect| (a perfect ranking reaches 0.81,
the truth having ties at 0): integrated gradients 0.55, attention 0.23, permutation 0.53 (5
repeats), removal 0.53. Data seeds 1 and 2 give 0.71 / 0.78 (integrated gradients), 0.59 / 0.44
(permutation), 0.48 / -0.02 (removal): the issue's 0.5 holds for integrated gradients on every
seed, and for permutation on this one and seed 1. docs/explain.md has the full table and limits.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from aam_ds.data.metadata import load_metadata
from aam_ds.data.synthetic import SPARSE_AGE, generate_demo
from aam_ds.data.table import load_table

ROOT = Path(__file__).resolve().parents[1]
RHO_AT_LEAST = {"integrated_gradients": 0.5, "attention": 0.1, "permutation": 0.5, "removal": 0.3}


def run(cmd: list[str], timeout: float = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def sparse_demo(tmp_path_factory):
    """Demo data whose age signal sits on a few clades (:data:`SPARSE_AGE`); its truth.tsv is 0 elsewhere."""
    return generate_demo(tmp_path_factory.mktemp("sparse-demo"), seed=0, design=SPARSE_AGE)


@pytest.fixture(scope="module")
def age_run(cache, sparse_demo, tmp_path_factory) -> Path:
    """Fine-tune a tiny model on age, half the subjects held out, every ASV of a sample kept."""
    run_dir = tmp_path_factory.mktemp("age-run")
    settings = {
        "model.preset": "tiny",
        "data.table": sparse_demo.table,
        "data.tree": sparse_demo.tree,
        "data.metadata": sparse_demo.metadata,
        "data.max_asvs": 128,
        "data.max_seq_len": 64,
        "data.cache_dir": cache,
        "data.split.val_fraction": 0.5,
        "data.split.kind": "grouped",
        "data.split.group_column": "subject",
        "schedule.steps": 60,
        "schedule.warmup_steps": 5,
        "schedule.log_every": 20,
        "schedule.eval_every": 1000,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": 16,
        "parallel.zero_stage": 0,
        "loss.pairwise_weight": 0,
        "loss.nucleotide_weight": 0,
        "optim.lr": 0.003,
        "loss.task": "regression",
        "data.targets": "[age]",
    }
    run([sys.executable, "launch/finetune.py", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])
    return run_dir


@pytest.fixture(scope="module")
def explained(age_run, sparse_demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("explain")
    printed = run(
        [
            sys.executable,
            "-m",
            "aam_ds.cli",
            "explain",
            "--model",
            str(age_run / "model.pt"),
            "--table",
            str(sparse_demo.table),
            "--metadata",
            str(sparse_demo.metadata),
            "--target",
            "age",
            "--samples",
            str(age_run / "splits" / "val.txt"),
            "--repeats",
            "5",
            "--steps",
            "16",
            "--show",
            "2",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--out-dir",
            str(out),
        ]
    )
    assert "explaining" in printed and "wrote the importance of" in printed  # progress bar and summary
    return out


@pytest.mark.slow
def test_importance_ranks_asvs_by_their_true_age_effect(age_run, explained, sparse_demo):
    table = pd.read_csv(explained / "importance.tsv", sep="\t", index_col=0)
    truth = pd.read_csv(sparse_demo.truth, sep="\t", index_col=0)
    assert set(table.index) <= set(truth.index)
    effect = truth.loc[table.index, "age"].abs()
    rho = {m: spearmanr(table[m], effect).statistic for m in ("integrated_gradients", "attention", "permutation", "removal")}
    seen = table["n_samples"] >= 0.1 * len((age_run / "splits" / "val.txt").read_text().split())
    print("Spearman rho with |true age effect|:", {m: round(r, 3) for m, r in rho.items()})
    print(
        f"... over the {int(seen.sum())} ASVs in >= 10 % of the explained samples:",
        {m: round(spearmanr(table.loc[seen, m], effect[seen]).statistic, 3) for m in rho},
    )
    for method, floor in RHO_AT_LEAST.items():
        assert rho[method] >= floor, rho
    for method in ("integrated_gradients", "attention", "permutation", "removal"):
        ranks = table[f"{method}_rank"]
        assert ranks.min() == 1 and (np.diff(table.sort_values(method, ascending=False)[f"{method}_rank"]) >= 0).all()
    inside = table["permutation_ci_low"] - 1e-12 <= table["permutation"]
    assert (inside & (table["permutation"] <= table["permutation_ci_high"] + 1e-12)).all()
    assert (table["permutation_ci_high"] > table["permutation_ci_low"]).mean() > 0.5  # real intervals, not points
    md5 = [hashlib.md5(a.encode()).hexdigest()[:8] for a in table.index]  # sequence IDs are labelled by their QIIME 2 hash
    assert list(table["label"]) == [f"md5:{h}" for h in md5]
    attributions = pd.read_csv(explained / "attributions.tsv", sep="\t", index_col=0)  # samples x ASVs, every ASV credited
    assert list(attributions.index) == (age_run / "splits" / "val.txt").read_text().split() and set(attributions) == set(table.index)
    total = attributions.sum(axis=1)
    share = attributions.sub(attributions.mean()).mul(total - total.mean(), axis=0).mean() / total.var(ddof=0)
    np.testing.assert_allclose(table["integrated_gradients"], share.abs()[table.index], rtol=1e-3, atol=1e-6)
    for name in ("top_asvs.png", "attention_asv.tsv", "attention.npz", "attention_0.png", "pool_1.png", "nucleotides_0.png"):
        assert (explained / name).stat().st_size > 0, name


@pytest.mark.slow
def test_removal_equals_predicting_the_table_without_the_asv(age_run, sparse_demo, explained, tmp_path):
    """Removal importance of an ASV = the change of ``aam-ds predict``'s MAE when that ASV is taken out
    of the table (every ASV of a sample is kept, so nothing else changes). Only the samples holding
    the ASV change, so they alone are predicted: their summed error change over all held-out samples."""
    from aam_ds.data.table import FeatureTable
    from aam_ds.evaluation.predictions import Predictions
    from aam_ds.inference.predict import predict_table

    held_out = (age_run / "splits" / "val.txt").read_text().split()
    table = pd.read_csv(explained / "importance.tsv", sep="\t", index_col=0)
    asv = table["removal"].idxmax()  # the ASV whose removal hurts most
    whole = load_table(sparse_demo.table)
    column = whole.asv_ids.index(asv)
    holding = [whole.sample_ids.index(s) for s in held_out if whole.counts[whole.sample_ids.index(s), column] > 0]
    whole = whole.take_samples(holding).drop_empty_asvs()
    ages = load_metadata(sparse_demo.metadata)["age"].astype(float)

    def total_error(feature_table: FeatureTable) -> float:
        path = tmp_path / "t.biom"
        write_biom(feature_table, path)
        prediction: Predictions = predict_table(age_run / "model.pt", path)[0]
        return float(np.abs(prediction.values - ages.loc[prediction.sample_ids].to_numpy()).sum())

    keep = [j for j, a in enumerate(whole.asv_ids) if a != asv]
    without = FeatureTable(whole.sample_ids, [whole.asv_ids[j] for j in keep], whole.counts[:, keep].tocsr(), "without")
    assert 0 < len(holding) < len(held_out)
    change = (total_error(without) - total_error(whole)) / len(held_out)
    assert change == pytest.approx(table.loc[asv, "removal"], abs=1e-4)
    assert table.loc[asv, "removal"] > 1e-3  # a real change, not 0 = 0


def write_biom(table, path: Path) -> None:
    import biom
    import h5py

    with h5py.File(path, "w") as handle:
        biom.Table(table.counts.T.tocsr(), table.asv_ids, table.sample_ids).to_hdf5(handle, "test")


@pytest.mark.parametrize("design", ["demo", "sparse_demo"])
def test_truth_file_matches_the_generated_composition(design, request):
    """truth.tsv's age effects are what the table shows: ASVs with a positive effect are found in older samples.
    With the age signal on a few clades (SPARSE_AGE), the other ASVs' effect is exactly 0."""
    demo = request.getfixturevalue(design)
    table = load_table(demo.table)
    truth = pd.read_csv(demo.truth, sep="\t", index_col=0)
    assert list(truth.columns) == ["age", "body_site_gut", "body_site_oral", "body_site_skin"]
    assert set(truth.index) == set(table.asv_ids)
    np.testing.assert_allclose(truth.abs().max(), truth.abs().max().clip(lower=1e-3))  # no empty column
    ages = load_metadata(demo.metadata).loc[table.sample_ids, "age"].astype(float).to_numpy()
    present = table.counts.toarray() > 0
    observed = [spearmanr(present[:, j], ages).statistic if 0 < present[:, j].sum() < len(ages) else 0.0 for j in range(len(table.asv_ids))]
    assert spearmanr(observed, truth.loc[table.asv_ids, "age"]).statistic > 0.5
    silent = (truth["age"] == 0).mean()
    assert silent == 0 if design == "demo" else 0.6 <= silent <= 0.8, silent


@pytest.mark.slow
@pytest.mark.parametrize("baseline_asvs", [512, 40])
def test_integrated_gradients_add_up_to_the_prediction_minus_the_expected_samples(age_run, sparse_demo, baseline_asvs):
    """Completeness: per sample, the attributions (absent ASVs included) sum to its prediction minus the
    prediction of the expected sample (every ASV at its mean abundance, present at its prevalence, or
    only the ``baseline_asvs`` most prevalent: the others are credited only where present), in years."""
    import torch

    from aam_ds.explain.forward import SampleForward, explain_data
    from aam_ds.explain.importance import Target, expected_sample, integrated_gradients, sample_point
    from aam_ds.export import build_exported_model, load_export
    from aam_ds.inference.predict import prepare_inputs

    export = load_export(age_run / "model.pt")
    held_out = (age_run / "splits" / "val.txt").read_text().split()[:6]
    forward = SampleForward(build_exported_model(export), explain_data(prepare_inputs(export, sparse_demo.table), held_out), batch_size=4)
    attributions = integrated_gradients(forward, Target("age", 0), steps=64, baseline_asvs=baseline_asvs)
    reference = expected_sample(forward, baseline_asvs)
    with torch.no_grad():
        expected = forward.to_output_units(forward.soft_task(reference.log_abundance[None], reference.presence[None]))[0, 0]
        at_samples = forward.to_output_units(forward.soft_task(*sample_point(forward, np.arange(len(held_out)), reference)))[:, 0]
    predicted = forward.predict()[:, 0]
    np.testing.assert_allclose(at_samples.double().numpy(), predicted, atol=1e-4)  # the integrated function is the model
    np.testing.assert_allclose(attributions.sum(axis=1), predicted - float(expected), rtol=0.02, atol=0.02)
    assert np.abs(predicted - float(expected)).max() > 1.0  # a real difference in years, not 0 = 0
    absent = forward.data.counts == 0
    in_reference = reference.presence.numpy() > 0
    assert np.abs(attributions[absent & in_reference]).max() > 0.01  # absent ASVs of the expected sample are credited
    assert (attributions[absent & ~in_reference] == 0).all() and in_reference.sum() == min(baseline_asvs, len(in_reference))


@pytest.fixture(scope="module")
def untrained_age_export(cache, tmp_path_factory) -> Path:
    from tests.test_predict import write_untrained_export

    return write_untrained_export(
        tmp_path_factory.mktemp("untrained") / "model.pt", cache, **{"loss.task": "regression", "data.targets": "[age]"}
    )


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--method", "permutation"], ["--method permutation", "needs the true values", "--metadata"]),
        (["--target", "bmi"], ["--target bmi", "predicts ['age']"]),
        (["--samples", "missing.txt"], ["missing.txt", "sample ID file not found"]),
        (["--steps", "0"], ["--steps", "must be at least 1"]),
        (["--baseline-asvs", "0"], ["--baseline-asvs", "must be at least 1"]),
        (["--taxonomy", "OTHER_TAXONOMY"], ["other-taxonomy.tsv", "names none of the table's", "same feature IDs"]),
        (["--out-dir", "A_FILE"], ["a-file.txt", "is a file, not a folder"]),
    ],
)
def test_bad_requests_are_one_line_errors(untrained_age_export, demo, tmp_path, capsys, extra, fragments):
    """Refused before any work: nothing is written to the output folder."""
    from aam_ds.cli import main

    (tmp_path / "other-taxonomy.tsv").write_text("Feature ID\tTaxon\nf0a1\tk__Bacteria; p__Firmicutes\n")  # another table's
    (tmp_path / "a-file.txt").write_text("")
    files = {"OTHER_TAXONOMY": str(tmp_path / "other-taxonomy.tsv"), "A_FILE": str(tmp_path / "a-file.txt")}
    out = tmp_path / "out"
    args = ["explain", "--model", str(untrained_age_export), "--table", str(demo.table), "--out-dir", str(out)]
    code = main([*args, *(files.get(a, a) for a in extra)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("aam-ds: error:"), err
    assert all(f in err for f in fragments), err
    assert not out.exists()


def test_a_pretraining_export_gets_the_attention_maps(cache, demo, tmp_path, capsys):
    """No task head: the default methods shrink to attention, with a notice, and the maps are written."""
    from aam_ds.cli import main
    from tests.test_predict import write_untrained_export

    export = write_untrained_export(tmp_path / "pretrained" / "model.pt", cache, finetuning=False)
    code = main(["explain", "--model", str(export), "--table", str(demo.table), "--show", "1", "--out-dir", str(tmp_path / "out")])
    printed = capsys.readouterr()
    assert code == 0 and "attention maps only" in printed.err, printed.err
    assert "by attention and the attention maps" in printed.out
    table = pd.read_csv(tmp_path / "out" / "importance.tsv", sep="\t", index_col=0)
    assert "attention" in table and "integrated_gradients" not in table
    for name in ("attention_asv.tsv", "attention.npz", "attention_0.png", "pool_0.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name


def test_untrained_export_explains_with_taxonomy(untrained_age_export, demo, tmp_path):
    """Without metadata: integrated gradients and attention; a taxonomy (QIIME 2 TSV) gives per-taxon sums."""
    from aam_ds.explain.run import ExplainOptions, explain_table

    ids = load_table(demo.table).asv_ids
    taxonomy = tmp_path / "taxonomy.tsv"
    names = ["k__Bacteria; p__Firmicutes; g__", "k__Bacteria; p__Bacteroidetes; g__Bacteroides"]
    taxonomy.write_text("Feature ID\tTaxon\tConfidence\n" + "".join(f"{a}\t{names[i % 2]}\t0.9\n" for i, a in enumerate(ids)))
    samples = tmp_path / "samples.txt"
    samples.write_text("sample-id\n" + "\n".join(load_table(demo.table).sample_ids[:12]))  # a header line is skipped
    options = ExplainOptions(("integrated_gradients", "attention"), taxonomy=taxonomy, samples=samples, show=1, steps=8)
    table = explain_table(untrained_age_export, demo.table, tmp_path / "out", options)
    by_taxon = pd.read_csv(tmp_path / "out" / "importance_by_taxon.tsv", sep="\t", index_col=0)
    assert set(by_taxon.index) == {"k__Bacteria; p__Firmicutes", "k__Bacteria; p__Bacteroidetes; g__Bacteroides"}
    np.testing.assert_allclose(by_taxon["integrated_gradients"].sum(), table["integrated_gradients"].sum(), rtol=1e-5)
    np.testing.assert_allclose(table["attention"].sum(), 1.0, rtol=1e-5)  # mean over samples of weights summing to 1
    assert (tmp_path / "out" / "top_taxa.png").stat().st_size > 0
