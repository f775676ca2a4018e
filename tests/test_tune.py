"""``aam-ds tune`` on the demo data with a tiny budget: a clearly worse trial is pruned, a study killed
between trials resumes from its storage without repeating finished trials, the best spec is
written ready to run; fine-tuning trials; a 2-rank trial gives every rank the same parameters;
bad search spaces are refused naming the entry."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import optuna
import pytest
import yaml
from test_engine_train import BIN, checked, launch

from aam_ds.cli import main
from aam_ds.engine.distributed import free_port
from aam_ds.errors import AamInputError
from aam_ds.spec import build_spec, load_spec
from aam_ds.tracking import read_metrics
from aam_ds.tune.space import load_space, set_fields

SPACE = {"loss.nucleotide_weight": {"type": "float", "low": 0.25, "high": 20.0}, "optim.lr": {"type": "log", "low": 1.0e-4, "high": 1.0e-2}}


def base_spec(path: Path, cache: Path, **sections) -> Path:
    """A tiny pretraining spec on the demo data: 4 steps, validation every 2."""
    spec = {
        "model": {"preset": "tiny"},
        "data": {"max_asvs": 16, "max_seq_len": 48, "cache_dir": str(cache), "split": {"val_fraction": 0.2}},
        "schedule": {"steps": 4, "warmup_steps": 0, "log_every": 1, "eval_every": 2},
        "parallel": {"micro_batch_size": 4, "zero_stage": 0, "collective_timeout_s": 60},
        "tracking": {"rich": False},
    }
    for section, values in sections.items():
        spec[section] = {**spec.get(section, {}), **values}
    path.write_text(yaml.safe_dump(spec))
    return path


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def tune_args(spec: Path, space: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return [
        "tune",
        "--spec",
        str(spec),
        "--space",
        str(space),
        "--trials",
        str(trials),
        "--storage",
        f"sqlite:///{out / 'tune.db'}",
        "--study-name",
        "demo",
        "--out-dir",
        str(out),
        *extra,
    ]


def states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def rank_params(output: str) -> dict[int, dict[str, str]]:
    """trial -> rank -> the parameters that rank said it trains (``[rank r] trial n: ...`` lines)."""
    said: dict[int, dict[str, str]] = {}
    for rank, trial, params in re.findall(r"\[rank (\d)\] trial (\d+): (.*)", output):
        said.setdefault(int(trial), {})[rank] = params
    return said


@pytest.mark.slow
def test_two_rank_trials_pruning_and_resume_after_kill_between_trials(tmp_path, cache):
    """Two ranks per trial (torchrun): a clearly worse trial is pruned at its first validation; the
    study, killed as trial 1 starts, resumes without rerunning trial 0 and reruns trial 1's values;
    every rank trains the parameters rank 0 drew from the storage; the best spec is ready to run."""
    out = tmp_path / "tune"
    out.mkdir()
    spec, space = base_spec(tmp_path / "run.yaml", cache), write_space(tmp_path / "space.yaml", SPACE)
    storage = f"sqlite:///{out / 'tune.db'}"
    study = optuna.create_study(storage=storage, study_name="demo", direction="minimize")
    for weight in (1.0, 0.25, 20.0):  # trial 2 weighs the masked-nucleotide loss 20x: a clearly worse validation loss
        study.enqueue_trial({"loss.nucleotide_weight": weight, "optim.lr": 1e-3})
    command = [
        str(BIN / "torchrun"),
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "aam_ds.cli",
        *tune_args(spec, space, out, 3, "--startup-trials", "1"),
    ]

    killed = launch(command, timeout=180, kill_when=(out / "trial-1").exists, cwd=tmp_path)
    assert killed.returncode != 0, killed.stdout[-3000:]
    first = (out / "trial-0" / "metrics.jsonl").read_bytes()
    assert states(study)[0] == "COMPLETE"

    command[2] = f"--master_port={free_port()}"
    resumed = checked(launch(command, timeout=240, cwd=tmp_path))
    assert "trial 1 of study demo was cut short" in resumed.stdout
    trials = {t.number: t for t in study.get_trials()}
    assert states(study) == {0: "COMPLETE", 1: "FAIL", 2: "PRUNED", 3: "COMPLETE"}
    assert (out / "trial-0" / "metrics.jsonl").read_bytes() == first  # the finished trial was not run again
    assert trials[3].params == trials[1].params and trials[3].user_attrs == {"retry_of": 1}
    assert list(trials[2].intermediate_values) == [2]  # pruned at its first validation
    assert max(r["step"] for r in read_metrics(out / "trial-2" / "metrics.jsonl")) == 2
    assert "trial 2 pruned at step 2" in resumed.stdout and "trial 3 completed: loss" in resumed.stdout

    said = {**rank_params(killed.stdout), **rank_params(resumed.stdout)}
    assert sorted(said) == [0, 1, 2, 3]
    for number, by_rank in said.items():  # each rank trained what rank 0 drew from the storage
        assert by_rank == dict.fromkeys(("0", "1"), ", ".join(f"{k}={v:.4g}" for k, v in trials[number].params.items()))
    trained = json.loads((out / "trial-3" / "spec.json").read_text())
    assert trained["optim"]["lr"] == trials[3].params["optim.lr"] and trained["parallel"]["global_batch_size"] == 8  # 4 x 2 ranks

    best = min((trials[0], trials[3]), key=lambda t: t.value)
    assert study.best_trial.number == best.number
    best_spec = load_spec(out / "best_spec.yaml")  # ready to run: a valid spec with the best values
    assert best_spec.loss.nucleotide_weight == best.params["loss.nucleotide_weight"]
    assert best_spec.optim.lr == pytest.approx(best.params["optim.lr"])
    assert best_spec.tracking.run_dir is None and best_spec.model.d_model == 64
    for name in ("optimization_history.png", "param_importances.png", "trials.tsv"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow
def test_finetuning_trials_optimise_a_task_metric_and_are_tracked(tmp_path, cache, monkeypatch, capsys, mlflow_server):
    monkeypatch.chdir(tmp_path)
    tracking = {"rich": False, "mlflow": mlflow_server, "project": "tune-finetune"}
    spec = base_spec(
        tmp_path / "run.yaml",
        cache,
        loss={"task": "regression", "pairwise_weight": 0, "nucleotide_weight": 0},
        data={"targets": ["age"]},
        parallel={"micro_batch_size": 8},
        tracking=tracking,
    )
    space = write_space(
        tmp_path / "space.yaml",
        {"optim.lr": {"type": "log", "low": 1e-3, "high": 3e-2}, "model.freeze_encoder": {"type": "categorical", "choices": [True, False]}},
    )
    saved = dict(os.environ)
    try:
        assert main(tune_args(spec, space, tmp_path / "tune", 2, "--metric", "mae")) == 0
    finally:  # the in-process world's launch variables must not reach later subprocesses
        os.environ.clear()
        os.environ.update(saved)
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'tune' / 'tune.db'}")
    assert study.direction.name == "MINIMIZE" and states(study) == {0: "COMPLETE", 1: "COMPLETE"}
    for trial in study.trials:
        evals = [
            r["metrics"]["mae"] for r in read_metrics(tmp_path / "tune" / f"trial-{trial.number}" / "metrics.jsonl") if r["kind"] == "eval"
        ]
        assert trial.value == evals[-1] and list(trial.intermediate_values.values()) == evals
        assert (tmp_path / "tune" / f"trial-{trial.number}" / "predictions_val.tsv").is_file()
    assert f"best trial {study.best_trial.number}: mae {study.best_value:.6g}" in printed
    assert load_spec(tmp_path / "tune" / "best_spec.yaml").model.freeze_encoder == study.best_params["model.freeze_encoder"]

    from mlflow import MlflowClient  # each trial is tracked like any run, with its evaluation report

    client = MlflowClient(mlflow_server)
    runs = {run.info.run_name: run for run in client.search_runs([client.get_experiment_by_name("tune-finetune").experiment_id])}
    assert set(runs) == {"demo-trial0", "demo-trial1"}
    for trial in study.trials:
        run = runs[f"demo-trial{trial.number}"]
        assert float(run.data.params["optim.lr"]) == trial.params["optim.lr"] and run.info.status == "FINISHED"
        assert {f.path for f in client.list_artifacts(run.info.run_id, "evaluation/val")} == {
            "evaluation/val/metrics.json",
            "evaluation/val/pred_vs_true.png",
            "evaluation/val/residuals.png",
            "evaluation/val/per_sample.tsv",
            "evaluation/val/worst_samples.tsv",
        }


def test_every_kind_of_dimension_draws_values_the_spec_accepts(tmp_path):
    space = load_space(
        write_space(
            tmp_path / "space.yaml",
            {
                "optim.lr": {"type": "log", "low": 1e-4, "high": 1e-2},
                "optim.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                "data.max_asvs": {"type": "int", "low": 8, "high": 64, "step": 8},
                "model.preset": {"type": "categorical", "choices": ["tiny", "small"]},
            },
        ),
        {},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = [space.suggest(study.ask()) for _ in range(30)]
    for values in drawn:
        assert 1e-4 <= values["optim.lr"] <= 1e-2 and 0.0 <= values["optim.weight_decay"] <= 0.1
        assert isinstance(values["data.max_asvs"], int) and values["data.max_asvs"] in range(8, 65, 8)
        spec = build_spec(set_fields({}, values))
        assert (spec.optim.lr, spec.data.max_asvs, spec.model.preset) == (
            values["optim.lr"],
            values["data.max_asvs"],
            values["model.preset"],
        )
    assert {v["model.preset"] for v in drawn} == {"tiny", "small"} and len({v["data.max_asvs"] for v in drawn}) > 3


def test_trial_whose_combination_the_spec_refuses_fails_alone(tmp_path, cache, capsys):
    """d_model 96 and n_heads 64 are each valid, together not (96 is not divisible by 64): that trial
    fails before any compute and the study goes on to the next."""
    out = tmp_path / "tune"
    spec = base_spec(
        tmp_path / "run.yaml",
        cache,
        model={"preset": None, "d_model": 64, "n_heads": 4, "asv_layers": 1, "sample_layers": 1, "ffn_mult": 2},
    )
    space = write_space(
        tmp_path / "space.yaml",
        {"model.d_model": {"type": "categorical", "choices": [64, 96]}, "model.n_heads": {"type": "categorical", "choices": [4, 64]}},
    )
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'tune.db'}", study_name="demo")
    study.enqueue_trial({"model.d_model": 96, "model.n_heads": 64})
    saved = dict(os.environ)
    try:
        assert main(tune_args(spec, space, out, 1, "--storage", f"sqlite:///{tmp_path / 'tune.db'}")) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert states(study) == {0: "FAIL"} and not (out / "trial-0").exists()
    assert "trial 0 failed: trial 0 of study demo: invalid run spec" in capsys.readouterr().out


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"optim.lrr": {"type": "float", "low": 0.1, "high": 0.2}}, r"optim.lrr: not a field of the run spec"),
        ({"optim": {"type": "float", "low": 0.1, "high": 0.2}}, r"optim: a section, not a field"),
        ({"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}, r"optim.lr: invalid range: low=0.1 is not below high=0.01"),
        ({"optim.lr": {"type": "log", "low": 0.0, "high": 0.01}}, r"optim.lr: invalid range: a log scale needs low > 0"),
        ({"optim.lr": {"type": "float", "low": -0.1, "high": 0.01}}, r"optim.lr: the run spec refuses -0.1"),
        ({"model.d_model": {"type": "int", "low": 32, "high": 64.5}}, r"model.d_model: high=64.5 is not an integer"),
        ({"model.preset": {"type": "categorical", "choices": []}}, r"model.preset: choices must be a non-empty list"),
        ({"model.preset": {"type": "categorical", "choices": ["tiny", "huge"]}}, r"model.preset: the run spec refuses 'huge'"),
        ({"optim.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, r"optim.lr: needs a mapping with type one of"),
        ({"tracking.run_dir": {"type": "categorical", "choices": ["a"]}}, r"tracking.run_dir: is set by aam-ds tune"),
    ],
)
def test_bad_search_space_is_refused_naming_the_entry(tmp_path, entry, message):
    with pytest.raises(AamInputError, match=message):
        load_space(write_space(tmp_path / "space.yaml", entry), {})


def test_bad_space_on_the_command_line_is_one_line_before_any_trial(tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", {"optim.learning_rate": {"type": "log", "low": 1e-4, "high": 1e-2}})
    assert main(["tune", "--space", str(space), "--trials", "2", "--storage", f"sqlite:///{tmp_path / 'tune.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "space.yaml: optim.learning_rate: not a field of the run spec" in err
    assert not (tmp_path / "tune.db").exists()
