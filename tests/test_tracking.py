"""Tracking: metrics.jsonl, the null logger of other ranks, W&B offline runs, the Rich console."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from aam_ds.errors import AamInputError
from aam_ds.spec import RunSpec
from aam_ds.tracking import NullLogger, RunLogger, make_logger, read_metrics
from aam_ds.tracking.base import FanOutLogger
from aam_ds.tracking.jsonl import JsonlLogger

TRAIN_REPORTS = [  # (step, epoch, losses, samples/s, lr)
    (10, 0, {"loss": 2.5, "pairwise": 1.5, "nucleotide": 1.0}, 410.0, 1e-4),
    (20, 0, {"loss": 2.0, "pairwise": 1.2, "nucleotide": 0.8}, 420.0, 2e-4),
    (30, 1, {"loss": 1.5, "pairwise": 0.9, "nucleotide": 0.6}, 430.0, 3e-4),
]
EVAL_METRICS = {"loss": 1.7, "pairwise": 1.0, "nucleotide": 0.7}
SUMMARY = {"final train loss": 1.5, "best eval loss": 1.7}


def make_spec(**tracking) -> RunSpec:
    return RunSpec.model_validate({"tracking": {"wandb": "disabled", **tracking}})


def recording_console(terminal: bool = False) -> Console:
    return Console(record=True, width=200, file=io.StringIO(), force_terminal=terminal)


def log_run(log, spec: RunSpec, scatter=None) -> None:
    log.start(spec, 100, {"world size": 1})
    for step, epoch, losses, rate, lr in TRAIN_REPORTS:
        log.log_train(step, epoch, losses, rate, lr)
    log.log_eval(30, EVAL_METRICS, scatter)


@pytest.fixture(autouse=True)
def no_wandb_env(monkeypatch, tmp_path):
    """W&B never touches the network or the home directory in these tests."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))


# --------------------------------------------------------------------------------------------
# metrics.jsonl


def test_metrics_jsonl_holds_every_report_flushed_as_logged(tmp_path):
    spec = make_spec()
    run_dir = tmp_path / "run"
    with make_logger(spec, 0, run_dir, console=recording_console()) as log:
        log_run(log, spec)
        # flushed per line: everything logged so far is on disk before the run ends
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == len(TRAIN_REPORTS) + 1
        log.finish(SUMMARY)

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert read_metrics(run_dir / "metrics.jsonl") == records
    assert [r["kind"] for r in records] == ["train"] * 3 + ["eval", "summary"]
    for record, (step, epoch, losses, rate, lr) in zip(records, TRAIN_REPORTS):
        assert (record["step"], record["epoch"], record["samples_per_s"], record["lr"]) == (step, epoch, rate, lr)
        assert record["metrics"] == losses
    assert records[3]["step"] == 30 and records[3]["metrics"] == EVAL_METRICS
    assert records[4]["metrics"] == SUMMARY
    times = [r["time"] for r in records]
    assert times == sorted(times)


def test_resumed_run_appends_after_a_line_cut_short(tmp_path):
    spec = make_spec()
    with make_logger(spec, 0, tmp_path, console=recording_console()) as log:
        log.start(spec, 100)
        log.log_train(10, 0, {"loss": 3.0}, 100.0, 1e-4)
    with open(tmp_path / "metrics.jsonl", "a") as fh:  # a crash in the middle of a write
        fh.write('{"kind": "train", "step": 2')

    with make_logger(spec, 0, tmp_path, console=recording_console()) as log:
        log.start(spec, 100)
        log.log_train(20, 0, {"loss": 2.0}, 100.0, 1e-4)

    with pytest.warns(UserWarning, match="damaged"):
        records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["metrics"]["loss"]) for r in records] == [(10, 3.0), (20, 2.0)]


class FailingBackend(RunLogger):
    def close(self, failed: bool = False) -> None:
        raise OSError("disk full")


def test_fan_out_closes_every_backend_when_one_fails(tmp_path):
    metrics = JsonlLogger(tmp_path / "metrics.jsonl")
    with pytest.raises(OSError, match="disk full"):
        FanOutLogger([FailingBackend(), metrics]).close(failed=True)
    with pytest.raises(RuntimeError, match="already closed"):
        metrics.log_eval(1, {"loss": 1.0})


# --------------------------------------------------------------------------------------------
# other ranks


def test_null_logger_of_other_ranks_writes_and_prints_nothing(tmp_path, capsys):
    spec = make_spec(wandb="offline")
    run_dir = tmp_path / "run"
    with make_logger(spec, 1, run_dir) as log:
        assert isinstance(log, NullLogger)
        log_run(log, spec, scatter=(np.ones(3), np.zeros(3)))
        log.print("not shown")
        log.finish(SUMMARY)
    assert not run_dir.exists()
    assert capsys.readouterr() == ("", "")


# --------------------------------------------------------------------------------------------
# W&B (offline only: never the network)


def wandb_records(path: Path) -> list:
    """Records of a .wandb transaction log: a 7-byte header, then LevelDB-style chunks in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a chunk header
            pos += block - pos % block
            continue
        _crc, length, chunk_type = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if chunk_type in (1, 4):  # FULL or LAST chunk ends a record
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def offline_run(run_dir: Path) -> tuple[Path, list]:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no offline run under {run_dir / 'wandb'}"
    (log_file,) = runs[-1].glob("run-*.wandb")
    return runs[-1], wandb_records(log_file)


def test_wandb_offline_run_holds_spec_metrics_scatter_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # overrides tracking.wandb=disabled
    spec = make_spec(project="aam-ds-test")
    run_dir = tmp_path / "run"
    predicted, true = np.array([0.1, 0.5, 0.9, 0.3]), np.array([0.2, 0.4, 1.0, 0.25])
    with make_logger(spec, 0, run_dir, console=recording_console()) as log:
        log_run(log, spec, scatter=(predicted, true))
        log.finish(SUMMARY)

    run_path, records = offline_run(run_dir)
    assert (run_dir / "wandb_run_id").read_text().strip() == run_path.name.rsplit("-", 1)[1]
    (run_record,) = [r.run for r in records if r.HasField("run")]
    config = {item_key(i): json.loads(i.value_json) for i in run_record.config.update}
    assert config["model"]["d_model"] == spec.model.d_model
    assert config["tracking"]["project"] == "aam-ds-test"
    assert config["run"] == {"total_steps": 100, "world size": 1}

    history = {}
    for record in records:
        if record.HasField("history"):
            row = {item_key(i): i.value_json for i in record.history.item}
            history.setdefault(int(row["_step"]), {}).update(row)
    assert sorted(history) == [10, 20, 30]
    for step, epoch, losses, rate, lr in TRAIN_REPORTS:
        for name, value in {**losses, "samples_per_s": rate, "lr": lr, "epoch": epoch}.items():
            assert json.loads(history[step][f"train/{name}"]) == value
    for name, value in EVAL_METRICS.items():
        assert json.loads(history[30][f"eval/{name}"]) == value

    (table_file,) = run_path.glob("files/media/table/eval/distance_scatter*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["true distance", "predicted distance"]
    np.testing.assert_allclose(table["data"], np.column_stack([true, predicted]))

    summary = {item_key(i): i.value_json for r in records if r.HasField("summary") for i in r.summary.update}
    assert {name: json.loads(summary[name]) for name in SUMMARY} == SUMMARY
    (exit_record,) = [r.exit for r in records if r.HasField("exit")]
    assert exit_record.exit_code == 0


def test_wandb_run_failed_on_exception_and_resumed_under_the_same_id(tmp_path):
    spec = make_spec(wandb="offline")
    with pytest.raises(RuntimeError, match="out of memory"):
        with make_logger(spec, 0, tmp_path, console=recording_console()) as log:
            log.start(spec, 100)
            log.log_train(10, 0, {"loss": 3.0}, 100.0, 1e-4)
            raise RuntimeError("out of memory")
    first_path, records = offline_run(tmp_path)
    (exit_record,) = [r.exit for r in records if r.HasField("exit")]
    assert exit_record.exit_code != 0
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10]

    resumed = RunSpec.model_validate({**spec.model_dump(), "checkpoint": {"resume": True}})
    with make_logger(resumed, 0, tmp_path, console=recording_console()) as log:
        log.start(resumed, 100)
        log.log_train(20, 0, {"loss": 2.0}, 100.0, 1e-4)
        log.finish({"loss": 2.0})
    second_path, records = offline_run(tmp_path)
    assert second_path != first_path
    (run_record,) = [r.run for r in records if r.HasField("run")]
    assert run_record.run_id == (tmp_path / "wandb_run_id").read_text().strip() == first_path.name.rsplit("-", 1)[1]


def test_unknown_wandb_mode_in_environment_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offlne")
    with pytest.raises(AamInputError, match="WANDB_MODE.*offlne"):
        make_logger(make_spec(), 0, tmp_path)


# --------------------------------------------------------------------------------------------
# Rich console


def test_console_prints_plain_lines_and_a_summary_table_with_every_loss(tmp_path):
    spec = make_spec()
    console = recording_console()
    with make_logger(spec, 0, tmp_path, console=console) as log:
        log_run(log, spec)
        log.print("checkpoint saved [step 30]")
        log.finish(SUMMARY)
    text = console.export_text()
    assert "step 30/100 | epoch 1 | 430.0 samples/s | loss 1.5 pairwise 0.9 nucleotide 0.6 | lr 3.00e-04" in text
    assert "eval step 30 | loss 1.7 pairwise 1 nucleotide 0.7" in text
    assert "checkpoint saved [step 30]" in text  # markup-like text printed as written
    table = text[text.index("run summary") :]
    for name, value in SUMMARY.items():
        assert any(name in line and str(value) in line for line in table.splitlines()), name


def test_terminal_gets_a_progress_bar_with_losses_lr_and_eta(tmp_path):
    spec = make_spec()
    console = recording_console(terminal=True)
    with make_logger(spec, 0, tmp_path, console=console) as log:
        log_run(log, spec)
        log.finish(SUMMARY)
    text = console.export_text()
    assert "━" in text and "30/100" in text
    assert "samples/s" in text and "nucleotide 0.6" in text and "lr 3.00e-04" in text and "ETA" in text
    assert "step 30/100 |" not in text  # no plain lines when the bar is live


def logged_artifacts(records: list) -> dict[str, set[str]]:
    """Artifact name -> the paths in its manifest, from an offline run's records."""
    found = {}
    for record in records:
        if record.HasField("artifact"):
            found[record.artifact.name] = {entry.path for entry in record.artifact.manifest.contents}
    return found


def test_wandb_keeps_run_files_and_evaluation_plots_as_artifacts(tmp_path):
    from aam_ds.evaluation.plots import plot_predicted_vs_true

    spec = make_spec(wandb="offline", name="demo-run")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    plot = plot_predicted_vs_true(run_dir / "evaluation" / "pred_vs_true.png", np.arange(5.0), np.arange(5.0) + 0.5, "age")
    with make_logger(spec, 0, run_dir, console=recording_console()) as log:
        assert log.keeps_files
        log_run(log, spec)
        log.log_artifacts([run_dir / "spec.json", run_dir / "model.pt"])  # no model.pt: skipped
        log.log_artifacts([plot], "evaluation/val")
        log.finish(SUMMARY)
    run_path, records = offline_run(run_dir)
    assert logged_artifacts(records) == {"demo-run-files": {"spec.json"}, "demo-run-evaluation_val": {"pred_vs_true.png"}}
    assert list(run_path.glob("files/media/images/evaluation/val/pred_vs_true*.png"))  # shown in the media panel too


def test_metrics_only_logger_keeps_no_files(tmp_path):
    with make_logger(make_spec(), 0, tmp_path, console=recording_console()) as log:
        assert not log.keeps_files


def test_benchmark_report_is_kept_by_wandb(tmp_path):
    """The benchmark's report folder becomes one W&B run: report files and plots as artifacts, pooled metrics as summary."""
    from aam_ds.benchmark.report import track_report
    from aam_ds.evaluation.plots import plot_predicted_vs_true

    out = tmp_path / "bench"
    out.mkdir()
    report = {
        "target": "age",
        "task": "regression",
        "files": ["predicted_vs_true.png", "report.md", "report.json", "folds.tsv"],
        "models": {"random forest": {"pooled": {"mae": 6.5, "r2": 0.3}}, "AAM": {"pooled": {"mae": 6.2, "r2": 0.35}}},
    }
    plot_predicted_vs_true(out / "predicted_vs_true.png", np.arange(4.0), np.arange(4.0), "age")
    for name in ("report.md", "report.json", "folds.tsv", "predictions_AAM.tsv"):
        (out / name).write_text(f"{name}\n")
    track_report(make_spec(wandb="offline"), out, report)
    run_path, records = offline_run(out)
    assert logged_artifacts(records) == {
        "bench-report-benchmark": {"predicted_vs_true.png", "report.md", "report.json", "folds.tsv", "predictions_AAM.tsv"}
    }
    summary = {item_key(i): json.loads(i.value_json) for r in records if r.HasField("summary") for i in r.summary.update}
    assert summary["AAM/mae"] == 6.2 and summary["random forest/r2"] == 0.3


def test_benchmark_report_without_tracking_services_logs_nothing(tmp_path):
    from aam_ds.benchmark.report import track_report

    track_report(make_spec(), tmp_path, {"target": "age", "task": "regression", "files": [], "models": {}})
    assert list(tmp_path.iterdir()) == []
