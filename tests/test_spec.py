"""Run spec: loading in three formats, overrides, derived batch sizes and every cross-field rule."""

import json

import pytest
import yaml

from aam_ds.errors import AamInputError
from aam_ds.spec import MODEL_PRESETS, load_spec


def test_yaml_toml_json_load_the_same_spec(tmp_path):
    doc = {"model": {"preset": "tiny"}, "parallel": {"global_batch_size": 32, "micro_batch_size": 8}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "s.json").write_text(json.dumps(doc))
    (tmp_path / "s.toml").write_text('[model]\npreset = "tiny"\n[parallel]\nglobal_batch_size = 32\nmicro_batch_size = 8\n')
    specs = [load_spec(tmp_path / f"s.{ext}") for ext in ("yaml", "json", "toml")]
    assert specs[0] == specs[1] == specs[2]
    assert specs[0].parallel.grad_accum_steps == 4
    assert specs[0].model.d_model == MODEL_PRESETS["tiny"]["d_model"]


def test_dotted_overrides_are_typed_and_beat_the_file(tmp_path):
    (tmp_path / "s.yaml").write_text("model:\n  preset: tiny\n")
    spec = load_spec(tmp_path / "s.yaml", ["model.d_model=96", "optim.lr=1e-3", "data.targets=[age, bmi]"])
    assert spec.model.d_model == 96 and spec.model.n_heads == MODEL_PRESETS["tiny"]["n_heads"]
    assert spec.optim.lr == pytest.approx(1e-3)
    assert spec.data.targets == ["age", "bmi"]


@pytest.mark.parametrize(
    "given, world, expected",
    [
        ({"global_batch_size": 64, "micro_batch_size": 8}, 2, (64, 8, 4)),
        ({"global_batch_size": 64, "grad_accum_steps": 2}, 4, (64, 8, 2)),
        ({"micro_batch_size": 16, "grad_accum_steps": 3}, 2, (96, 16, 3)),
    ],
)
def test_any_two_batch_sizes_derive_the_third(given, world, expected):
    overrides = [f"parallel.{k}={v}" for k, v in given.items()] + [f"parallel.world_size={world}"]
    p = load_spec(None, overrides).parallel
    assert (p.global_batch_size, p.micro_batch_size, p.grad_accum_steps) == expected


def test_world_size_comes_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    p = load_spec(None, ["parallel.micro_batch_size=2", "parallel.grad_accum_steps=1"]).parallel
    assert p.global_batch_size == 8


BAD_SPECS = [
    (["model.d_modle=256"], "model.d_modle", "unknown key"),
    (["nonsense.key=1"], "nonsense", "unknown key"),
    (["parallel.global_batch_size=30", "parallel.micro_batch_size=8"], "global_batch_size=30", "multiple of 8"),
    (["parallel.global_batch_size=10", "parallel.grad_accum_steps=1", "parallel.world_size=4"], "world size 4", "multiple of 4"),
    (
        ["parallel.global_batch_size=10", "parallel.micro_batch_size=2", "parallel.grad_accum_steps=2"],
        "global_batch_size=10",
        "give only two",
    ),
    (["parallel.zero_stage=2", "parallel.offload_param=cpu"], "offload_param", "zero_stage=3"),
    (["parallel.zero_stage=3", "parallel.offload_optimizer=nvme"], "nvme_path", "NVMe"),
    (["parallel.micro_batch_size=1"], "micro_batch_size", "pairwise_weight=0"),
    (["parallel.precision=fp8"], "parallel.precision", "bf16"),
    (["model.preset=null", "model.d_model=0"], "model.d_model", "preset"),
    (["model.preset=tiny", "model.d_model=65"], "d_model=65", "n_heads"),
    (["schedule.steps=10", "schedule.warmup_steps=20"], "warmup_steps", "schedule.steps"),
    (["data.split.kind=grouped"], "group_column", "host_subject_id"),
    (["checkpoint.resume=true", "tracking.overwrite=true"], "tracking.overwrite", "set only one"),
]


@pytest.mark.parametrize(
    "steps, warmup, eval_every, log_every, checkpoint_every",
    [(3, 0, 1, 1, 50), (10, 1, 2, 1, 50), (200, 20, 50, 10, 50), (5000, 20, 50, 10, 500)],
)
def test_intervals_left_unset_scale_with_the_run_length(steps, warmup, eval_every, log_every, checkpoint_every):
    spec = load_spec(None, [f"schedule.steps={steps}"])
    s = spec.schedule
    assert (s.warmup_steps, s.eval_every, s.log_every, spec.checkpoint.every_steps) == (warmup, eval_every, log_every, checkpoint_every)


def test_intervals_set_by_the_user_are_kept():
    spec = load_spec(
        None,
        ["schedule.steps=10", "schedule.warmup_steps=10", "schedule.eval_every=1000", "schedule.log_every=7", "checkpoint.every_steps=0"],
    )
    s = spec.schedule
    assert (s.warmup_steps, s.eval_every, s.log_every, spec.checkpoint.every_steps) == (10, 1000, 7, 0)


@pytest.mark.parametrize("overrides, names, fix", BAD_SPECS, ids=[" ".join(o[0]) for o in BAD_SPECS])
def test_bad_specs_name_the_field_and_the_fix(overrides, names, fix):
    with pytest.raises(AamInputError) as err:
        load_spec(None, overrides)
    assert names in str(err.value) and fix in str(err.value)


def test_every_mistake_is_reported_at_once():
    with pytest.raises(AamInputError) as err:
        load_spec(None, ["model.widht=3", "optim.lr=-1"])
    assert "model.widht" in str(err.value) and "optim.lr" in str(err.value)


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("s.yaml", "model: [unclosed", "cannot be parsed"),
        ("s.ini", "[model]", "unknown spec format"),
        ("s.yaml", "- a\n- b\n", "not a mapping"),
    ],
)
def test_bad_spec_files(tmp_path, name, text, problem):
    (tmp_path / name).write_text(text)
    with pytest.raises(AamInputError) as err:
        load_spec(tmp_path / name)
    assert name in str(err.value) and problem in str(err.value)


def test_override_without_equals_sign_is_explained():
    with pytest.raises(AamInputError, match="dotted.key=value"):
        load_spec(None, ["model.d_model"])
