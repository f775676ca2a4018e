"""``aam-ds predict``: fine-tune on the demo data with the real trainer, then predict in a fresh
process and compare with what the engine itself measured at the end of training; repeated passes;
refusals of inputs the model cannot read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aam_ds.data.metadata import load_metadata
from aam_ds.errors import AamInputError
from aam_ds.evaluation.predictions import Predictions, read_predictions
from aam_ds.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = str(ROOT / "launch" / "finetune.py")


def settings(cache: Path, run_dir: Path, **overrides) -> dict:
    """A small, fast fine-tuning run on the demo data (task loss only)."""
    return {
        "model.preset": "tiny",
        "data.max_asvs": 16,
        "data.max_seq_len": 48,
        "data.cache_dir": cache,
        "schedule.steps": 6,
        "schedule.warmup_steps": 1,
        "schedule.log_every": 1,
        "schedule.eval_every": 1000,
        "tracking.run_dir": run_dir,
        "tracking.rich": "false",
        "parallel.micro_batch_size": 8,
        "loss.pairwise_weight": 0,
        "loss.nucleotide_weight": 0,
        "optim.lr": 0.003,
        **overrides,
    }


def run(cmd: list[str], timeout: float = 240) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def finetune(cache: Path, run_dir: Path, **overrides) -> Path:
    """Fine-tune through ``launch/finetune.py`` in its own process; returns the run folder."""
    args = [a for key, value in settings(cache, run_dir, **overrides).items() for a in ("--set", f"{key}={value}")]
    run([sys.executable, FINETUNE, *args])
    return run_dir


def predict_cli(*args: str) -> str:
    """`aam-ds predict ...` in a fresh interpreter."""
    return run([sys.executable, "-m", "aam_ds.cli", "predict", *args], timeout=120)


def final_eval(run_dir: Path) -> dict[str, float]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "eval"][-1]["metrics"]


def split_ids(run_dir: Path, split: str) -> list[str]:
    return (run_dir / "splits" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def regression_run(cache, tmp_path_factory) -> Path:
    return finetune(cache, tmp_path_factory.mktemp("regression"), **{"loss.task": "regression", "data.targets": "[age]"})


# --------------------------------------------------------------------------------------------
# round trips through the real trainer


@pytest.mark.slow
def test_regression_round_trip_matches_training_in_original_units(regression_run, demo, tmp_path):
    out = tmp_path / "age.tsv"
    printed = predict_cli("--model", str(regression_run / "model.pt"), "--table", str(demo.table), "--out", str(out), "--device", "cpu")
    assert "wrote 300 regression predictions of 'age'" in printed
    assert re.search(r"predicting .*300/300 samples", printed)  # the progress bar's final state
    predictions = read_predictions(out, "age", "regression")
    ages = load_metadata(demo.metadata)["age"]
    assert sorted(predictions.sample_ids) == sorted(ages.index)

    # the engine's own evaluation of the validation split at the last step, in years
    val = split_ids(regression_run, "val")
    by_id = dict(zip(predictions.sample_ids, predictions.values))
    predicted, true = np.array([by_id[s] for s in val]), ages.loc[val].to_numpy()
    engine = final_eval(regression_run)
    assert np.abs(predicted - true).mean() == pytest.approx(engine["mae"], rel=1e-5)
    r2 = 1 - ((predicted - true) ** 2).sum() / ((true - true.mean()) ** 2).sum()
    assert r2 == pytest.approx(engine["r2"], abs=1e-5)
    # ... and the predictions the trainer itself wrote at the end of fine-tuning
    at_training_end = read_predictions(regression_run / "predictions_val.tsv", "age", "regression")
    assert at_training_end.sample_ids == val
    np.testing.assert_allclose(predicted, at_training_end.values, rtol=1e-6)

    # original units: centred on the training ages (mean ~54 years, sd ~17), not on 0
    train_ages = ages.loc[split_ids(regression_run, "train")]
    assert abs(predictions.values.mean() - train_ages.mean()) < 0.25 * train_ages.std()
    assert predictions.std is None


@pytest.mark.slow
def test_classification_round_trip_with_covariates_rarefaction_and_random_selection(cache, demo, tmp_path):
    from aam_ds.data.prepare import prepare_data
    from aam_ds.export import build_exported_model, load_export
    from aam_ds.prediction import predict_split
    from aam_ds.spec import RunSpec

    run_dir = finetune(
        cache,
        tmp_path / "run",
        **{
            "loss.task": "classification",
            "data.targets": "[body_site]",
            "data.covariates": "[subject]",
            "data.rarefy_depth": 2000,
            "data.rarefy_seed": 3,
            "data.asv_selection": "random",
            "data.split.seed": 5,
        },
    )
    out = tmp_path / "site.tsv"
    predict_cli(
        "--model",
        str(run_dir / "model.pt"),
        "--table",
        str(demo.table),
        "--metadata",
        str(demo.metadata),
        "--out",
        str(out),
        "--batch-size",
        "7",
    )
    predictions = read_predictions(out, "body_site", "classification")
    assert predictions.class_names == ("gut", "oral", "skin")
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, atol=1e-6)

    sites = load_metadata(demo.metadata)["body_site"]
    val = split_ids(run_dir, "val")
    labels = dict(zip(predictions.sample_ids, predictions.predicted_labels()))
    accuracy = np.mean([labels[s] == sites[s] for s in val])
    assert accuracy == pytest.approx(final_eval(run_dir)["accuracy"], abs=1e-6)  # float32 in the engine; steps of 1/30

    # the trainer's data pipeline (PreparedData) gives the same inputs, hence the same probabilities
    export = load_export(run_dir / "model.pt")
    spec = RunSpec.model_validate(export.spec)
    reference = predict_split(build_exported_model(export), prepare_data(spec), "val")[0]
    rows = [predictions.sample_ids.index(s) for s in reference.sample_ids]
    assert reference.sample_ids == val
    np.testing.assert_allclose(predictions.probabilities[rows], reference.probabilities, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# exports built in-process by the trainer's own model builder (random weights)


def write_untrained_export(path: Path, cache: Path, finetuning: bool = True, **overrides) -> Path:
    """An export written as the trainer writes it (its model builder, target description and export
    writer), with random weights instead of trained ones."""
    from aam_ds.data.prepare import prepare_data
    from aam_ds.engine.run_export import export_spec, target_description
    from aam_ds.engine.setup import build_model
    from aam_ds.export import Export, write_export
    from aam_ds.spec import load_spec

    spec = load_spec(None, [f"{k}={v}" for k, v in settings(cache, path.parent / "run", **overrides).items()])
    data = prepare_data(spec)
    model, model_args, model_spec = build_model(spec, data, finetuning)
    generator = torch.Generator().manual_seed(0)
    for param in model.parameters():  # random weights large enough that samples get distinct outputs
        param.data.normal_(0.0, 0.2, generator=generator)
    write_export(
        path, Export(model.state_dict(), export_spec(spec, model_spec), model_args, target_description(data, model, finetuning), 0)
    )
    return path


@pytest.fixture(scope="module")
def regression_export(cache, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("regression-export")
    return write_untrained_export(folder / "model.pt", cache, **{"loss.task": "regression", "data.targets": "[age]"})


@pytest.fixture(scope="module")
def covariate_export(cache, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("covariate-export")
    return write_untrained_export(
        folder / "model.pt", cache, **{"loss.task": "classification", "data.targets": "[body_site]", "data.covariates": "[subject]"}
    )


def write_demo_subset(path: Path, demo_table: Path, rows: list[int]) -> Path:
    """The given samples of the demo table, as a BIOM TSV (ASVs without reads left out)."""
    from aam_ds.data.table import load_table

    table = load_table(demo_table)
    dense = table.counts[rows].toarray()
    lines = ["#OTU ID\t" + "\t".join(table.sample_ids[i] for i in rows)]
    lines += [f"{asv}\t" + "\t".join(f"{c:g}" for c in dense[:, j]) for j, asv in enumerate(table.asv_ids) if dense[:, j].any()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def small_table(demo, tmp_path_factory) -> Path:
    return write_demo_subset(tmp_path_factory.mktemp("small") / "table.tsv", demo.table, list(range(0, 300, 5)))


def test_passes_over_asv_subsets(regression_export, small_table):
    from aam_ds.inference.predict import predict_table

    single = predict_table(regression_export, small_table)[0]
    whole = predict_table(regression_export, small_table, passes=2, subset_fraction=1.0)[0]
    np.testing.assert_allclose(whole.values, single.values, rtol=1e-6)  # every pass sees every ASV
    np.testing.assert_allclose(whole.std, 0.0, atol=1e-6 * np.abs(single.values).max())

    subsets = predict_table(regression_export, small_table, passes=3, subset_fraction=0.8, seed=1)[0]
    assert (subsets.std > 0).all()
    assert np.corrcoef(subsets.values, single.values)[0, 1] > 0.9  # the same ranking of samples
    np.testing.assert_allclose(subsets.values, single.values, rtol=0.1)  # and the same units and level (within 10 %)
    again = predict_table(regression_export, small_table, passes=3, subset_fraction=0.8, seed=1)[0]
    np.testing.assert_array_equal(again.values, subsets.values)
    other = predict_table(regression_export, small_table, passes=3, subset_fraction=0.8, seed=2)[0]
    assert not np.allclose(other.values, subsets.values)


def test_pass_draws_do_not_depend_on_the_other_samples(regression_export, demo, small_table, tmp_path):
    """A sample's subsets come from (seed, pass, its ID): predicting it in a smaller table, in
    another order and batch size, gives the same mean and spread."""
    from aam_ds.inference.predict import predict_table

    tiny = write_demo_subset(tmp_path / "tiny.tsv", demo.table, [35, 10, 250, 5])
    full = predict_table(regression_export, small_table, passes=3, subset_fraction=0.6, batch_size=32)[0]
    part = predict_table(regression_export, tiny, passes=3, subset_fraction=0.6, batch_size=3)[0]
    picked = full.take([full.sample_ids.index(s) for s in part.sample_ids])
    np.testing.assert_allclose(part.values, picked.values, rtol=1e-5)
    np.testing.assert_allclose(part.std, picked.std, rtol=1e-3, atol=1e-6)


def test_predict_takes_the_runs_folder_and_table_from_the_spec(regression_export, small_table, tmp_path, capsys):
    """`aam-ds predict --spec`: --model is <tracking.run_dir>/model.pt and --table is data.table (the
    flags of aam_ds/spec/flags.py); a flag given wins, and without model or table it says which is missing."""
    import yaml

    from aam_ds.cli import main as cli_main

    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump({"tracking": {"run_dir": str(regression_export.parent)}, "data": {"table": str(small_table)}}))
    assert cli_main(["predict", "--model", str(regression_export), "--table", str(small_table), "--out", str(tmp_path / "flags.tsv")]) == 0
    assert cli_main(["predict", "--spec", str(spec), "--out", str(tmp_path / "spec.tsv")]) == 0
    assert (tmp_path / "spec.tsv").read_text() == (tmp_path / "flags.tsv").read_text()
    tiny = write_demo_subset(tmp_path / "tiny.tsv", small_table, [0, 1, 2])
    assert cli_main(["predict", "--spec", str(spec), "--table", str(tiny), "--out", str(tmp_path / "tiny_preds.tsv")]) == 0
    assert len(read_predictions(tmp_path / "tiny_preds.tsv", "age").sample_ids) == 3
    capsys.readouterr()
    assert cli_main(["predict", "--table", str(small_table), "--out", str(tmp_path / "none.tsv")]) == 2
    assert "error: --model: no model given" in capsys.readouterr().err
    (tmp_path / "no_table.yaml").write_text(yaml.safe_dump({"tracking": {"run_dir": str(regression_export.parent)}}))
    assert cli_main(["predict", "--spec", str(tmp_path / "no_table.yaml"), "--out", str(tmp_path / "none.tsv")]) == 2
    assert "error: --table: no feature table given" in capsys.readouterr().err


def test_covariates_are_coded_in_the_training_classes(covariate_export, demo):
    from aam_ds.inference.predict import predict_table

    predictions = predict_table(covariate_export, demo.table, metadata=demo.metadata)
    assert [p.task for p in predictions] == ["classification"]
    assert predictions[0].probabilities.shape == (300, 3)


def test_several_targets_get_one_file_each(tmp_path):
    from aam_ds.prediction import write_prediction_files

    age, bmi = (Predictions(name, ["s1", "s2"], values=np.array([1.0, 2.0]) * k) for k, name in ((1, "age"), (3, "bmi")))
    assert write_prediction_files(tmp_path / "p.tsv", [age]) == [tmp_path / "p.tsv"]
    paths = write_prediction_files(tmp_path / "p.tsv", [age, bmi])
    assert paths == [tmp_path / "p.age.tsv", tmp_path / "p.bmi.tsv"]
    assert read_predictions(paths[1], "bmi").values.tolist() == [3.0, 6.0]


# --------------------------------------------------------------------------------------------
# refusals


def write_tsv_table(path: Path, asv_ids: list[str], n_samples: int = 3) -> Path:
    rng = np.random.default_rng(0)
    lines = ["#OTU ID\t" + "\t".join(f"S{i}" for i in range(n_samples))]
    lines += [f"{asv}\t" + "\t".join(str(c) for c in rng.integers(1, 50, n_samples)) for asv in asv_ids]
    path.write_text("\n".join(lines) + "\n")
    return path


def raises_input_error(call, *fragments: str) -> AamInputError:
    with pytest.raises(AamInputError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


def test_refuses_ids_that_are_not_dna_unless_a_fasta_is_given(regression_export, tmp_path):
    from aam_ds.inference.predict import predict_table

    table = write_tsv_table(tmp_path / "t.tsv", ["asv1", "asv2", "asv3"])
    raises_input_error(lambda: predict_table(regression_export, table), "not DNA sequences", "data.sequences")
    fasta = tmp_path / "seqs.fasta"
    fasta.write_text(">asv1\nACGTACGTTT\n>asv2\nGGGACCCATA\n>asv3\nTTTTACGACG\n")
    predicted = predict_table(regression_export, table, sequences=fasta)[0]
    assert predicted.sample_ids == ["S0", "S1", "S2"] and np.isfinite(predicted.values).all()


def test_samples_without_reads_are_left_out_with_a_warning(regression_export, tmp_path):
    from aam_ds.inference.predict import predict_table

    table = tmp_path / "t.tsv"
    table.write_text("#OTU ID\tfull\tempty\tother\nACGTAC\t5\t0\t1\nGGTACA\t2\t0\t0\n")
    with pytest.warns(UserWarning, match=r"1 samples have no reads .*\['empty'\]"):
        predicted = predict_table(regression_export, table)[0]
    assert predicted.sample_ids == ["full", "other"]


def test_refuses_bases_the_models_policy_cannot_read(regression_export, tmp_path):
    from aam_ds.inference.predict import predict_table

    ambiguous = write_tsv_table(tmp_path / "a.tsv", ["ACGTACGT", "ACGRACGT"])
    raises_input_error(lambda: predict_table(regression_export, ambiguous), "'ACGRACGT'", "data.ambiguous_bases=error")
    fasta = tmp_path / "gapped.fasta"
    fasta.write_text(">a\nACGT-ACGT\n>b\nACGTACGT\n")
    gapped = write_tsv_table(tmp_path / "g.tsv", ["a", "b"])
    raises_input_error(lambda: predict_table(regression_export, gapped, sequences=fasta), "'-'", "not a nucleotide")


def test_reads_ambiguity_codes_as_n_when_the_model_was_trained_so(cache, tmp_path):
    from aam_ds.inference.predict import predict_table

    export = write_untrained_export(
        tmp_path / "model.pt", cache, **{"loss.task": "regression", "data.targets": "[age]", "data.ambiguous_bases": "as_n"}
    )
    table = write_tsv_table(tmp_path / "a.tsv", ["ACGTACGT", "ACGRACGT"])
    assert np.isfinite(predict_table(export, table)[0].values).all()


def test_refuses_a_pretraining_export(cache, demo, tmp_path):
    from aam_ds.inference.predict import predict_table

    export = write_untrained_export(tmp_path / "pretrained.pt", cache, finetuning=False)
    raises_input_error(lambda: predict_table(export, demo.table), "pretraining export", "fine-tune it first")


def test_refuses_missing_or_unknown_covariates(covariate_export, demo, tmp_path):
    from aam_ds.inference.predict import predict_table

    raises_input_error(lambda: predict_table(covariate_export, demo.table), "--metadata", "['subject']")
    lines = demo.metadata.read_text().splitlines()
    partial = tmp_path / "partial.tsv"
    partial.write_text("\n".join(lines[:-2]) + "\n")  # the last two samples have no row
    raises_input_error(lambda: predict_table(covariate_export, demo.table, metadata=partial), "2 of the 300 samples", "no metadata row")
    renamed = tmp_path / "renamed.tsv"
    renamed.write_text("\n".join(lines[:-1] + [lines[-1].replace("\tsubject", "\tnewcomer")]) + "\n")
    raises_input_error(lambda: predict_table(covariate_export, demo.table, metadata=renamed), "'subject'", "not seen in training")
