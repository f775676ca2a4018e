"""DeepSpeed config generation and reconciliation of a user's file with the spec."""

import json
from pathlib import Path

import pytest

from aam_ds.cli import main as cli_main
from aam_ds.ds_config import build_ds_config, find_auto_values, resolve_ds_config
from aam_ds.errors import AamInputError
from aam_ds.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
CHECKED_IN = {
    "zero0.json": ["--stage", "0"],
    "zero1.json": ["--stage", "1"],
    "zero2.json": ["--stage", "2"],
    "zero3.json": ["--stage", "3"],
    "zero2_offload.json": ["--stage", "2", "--offload", "cpu"],
    "zero3_offload.json": ["--stage", "3", "--offload", "cpu"],
}


@pytest.mark.parametrize("name", sorted(CHECKED_IN))
def test_checked_in_configs_equal_the_generator_output(tmp_path, name):
    out = tmp_path / name
    assert cli_main(["ds-config", *CHECKED_IN[name], "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads((REPO / "ds_configs" / name).read_text())


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_generated_configs_are_fully_concrete(stage, precision):
    spec = load_spec(None, [f"parallel.zero_stage={stage}", f"parallel.precision={precision}"])
    config = build_ds_config(spec)
    assert find_auto_values(config) == []
    assert config["zero_optimization"]["stage"] == stage
    assert config["bf16"]["enabled"] == (precision == "bf16") and config["fp16"]["enabled"] == (precision == "fp16")


def test_bucket_sizes_follow_the_model_width():
    narrow = build_ds_config(load_spec(None, ["model.d_model=64", "parallel.zero_stage=3"]))["zero_optimization"]
    wide = build_ds_config(load_spec(None, ["model.d_model=512", "parallel.zero_stage=3"]))["zero_optimization"]
    assert narrow["reduce_bucket_size"] == 64 * 64 and wide["reduce_bucket_size"] == 512 * 512
    assert wide["stage3_param_persistence_threshold"] == 10 * 512


def test_nvme_offload_writes_the_path(tmp_path):
    spec = load_spec(
        None, ["parallel.zero_stage=3", "parallel.offload_param=nvme", "parallel.offload_optimizer=nvme", f"parallel.nvme_path={tmp_path}"]
    )
    zero = build_ds_config(spec)["zero_optimization"]
    assert zero["offload_param"] == {"device": "nvme", "nvme_path": str(tmp_path), "pin_memory": True}


def _write(tmp_path, config, name="user.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_user_file_decides_zero_offload_and_precision(tmp_path):
    config = build_ds_config(load_spec(None, ["parallel.zero_stage=3", "parallel.offload_optimizer=cpu", "parallel.precision=bf16"]))
    spec, used = resolve_ds_config(load_spec(None, ["model.preset=tiny"]), _write(tmp_path, config))
    assert (spec.parallel.zero_stage, spec.parallel.offload_optimizer, spec.parallel.precision) == (3, "cpu", "bf16")
    assert used["zero_optimization"] == config["zero_optimization"]


def test_checked_in_file_leaves_batch_optimiser_and_precision_to_the_spec():
    spec = load_spec(
        None,
        [
            "parallel.global_batch_size=256",
            "parallel.micro_batch_size=32",
            "parallel.precision=bf16",
            "optim.lr=0.0003",
            "model.preset=tiny",
        ],
    )
    resolved, used = resolve_ds_config(spec, REPO / "ds_configs" / "zero2.json")
    par = resolved.parallel
    assert (par.global_batch_size, par.micro_batch_size, par.grad_accum_steps, par.precision) == (256, 32, 8, "bf16")
    assert (used["train_micro_batch_size_per_gpu"], used["gradient_accumulation_steps"]) == (32, 8)
    assert used["bf16"]["enabled"] and not used["fp16"]["enabled"]
    assert used["optimizer"]["params"]["lr"] == 0.0003 and used["zero_optimization"]["stage"] == 2


def test_generated_file_pins_what_its_spec_sets(tmp_path):
    out = tmp_path / "bf16.json"
    assert (
        cli_main(
            ["ds-config", "--stage", "2", "--set", "parallel.precision=bf16", "--set", "parallel.micro_batch_size=4", "--out", str(out)]
        )
        == 0
    )
    config = json.loads(out.read_text())
    assert config["bf16"]["enabled"] and config["train_micro_batch_size_per_gpu"] == 4
    assert "optimizer" not in config and "gradient_clipping" not in config
    with pytest.raises(AamInputError) as err:
        resolve_ds_config(load_spec(None, ["parallel.precision=fp32", "parallel.micro_batch_size=8"]), out)
    assert "parallel.precision: spec says 'fp32'" in str(err.value) and "parallel.micro_batch_size: spec says 8" in str(err.value)
    resolved, _ = resolve_ds_config(load_spec(None), out)
    assert (resolved.parallel.precision, resolved.parallel.micro_batch_size) == ("bf16", 4)


def test_every_disagreement_is_listed_with_both_values(tmp_path):
    config = build_ds_config(load_spec(None))
    path = _write(tmp_path, config)
    spec = load_spec(
        None, ["parallel.micro_batch_size=4", "optim.lr=0.01", "optim.grad_clip=0.5", "parallel.precision=bf16", "parallel.zero_stage=1"]
    )
    with pytest.raises(AamInputError) as err:
        resolve_ds_config(spec, path)
    msg = str(err.value)
    assert str(path) in msg
    for field, spec_value, file_value in [
        ("parallel.micro_batch_size", "4", "8"),
        ("optim.lr", "0.01", "0.001"),
        ("optim.grad_clip", "0.5", "1.0"),
        ("parallel.precision", "'bf16'", "'fp32'"),
        ("parallel.zero_stage", "1", "2"),
    ]:
        assert f"{field}: spec says {spec_value}, {path} says {file_value}" in msg


def test_file_batch_that_world_size_does_not_divide(tmp_path):
    path = _write(tmp_path, {"train_batch_size": 10, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2}})
    with pytest.raises(AamInputError, match="not divisible by grad_accum_steps=1 x world size 4"):
        resolve_ds_config(load_spec(None, ["parallel.world_size=4"]), path)


@pytest.mark.parametrize(
    "config, problem",
    [
        (
            {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}},
            "'auto' values at train_micro_batch_size_per_gpu, zero_optimization.reduce_bucket_size",
        ),
        ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "bf16 and fp16 are both enabled"),
    ],
)
def test_bad_user_files(tmp_path, config, problem):
    with pytest.raises(AamInputError) as err:
        resolve_ds_config(load_spec(None), _write(tmp_path, config))
    assert problem in str(err.value) and "Fix:" in str(err.value)


def test_unreadable_user_files(tmp_path):
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(AamInputError, match="not valid JSON"):
        resolve_ds_config(load_spec(None), tmp_path / "broken.json")
    with pytest.raises(AamInputError, match="aam-ds ds-config"):
        resolve_ds_config(load_spec(None), tmp_path / "missing.json")
