"""One batch plan (aam_ds/spec/batch.py): global = micro x accumulation x world size, resolved once when the
spec is validated, checked at launch, changed only by the micro-batch search, read by the DeepSpeed config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aam_ds.ds_config import build_ds_config, pinned_ds_config
from aam_ds.engine.memory import with_batch_plan
from aam_ds.engine.setup import check_world_size
from aam_ds.errors import AamInputError
from aam_ds.spec import DEFAULT_MICRO_BATCH, BatchPlan, load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "given, world, expected",
    [
        ({}, 1, (DEFAULT_MICRO_BATCH, DEFAULT_MICRO_BATCH, 1)),
        ({"grad_accum_steps": 3}, 2, (DEFAULT_MICRO_BATCH * 3 * 2, DEFAULT_MICRO_BATCH, 3)),
        ({"micro_batch_size": 4}, 2, (8, 4, 1)),
        ({"global_batch_size": 12}, 3, (12, 4, 1)),
        ({"global_batch_size": 48, "grad_accum_steps": 2}, 3, (48, 8, 2)),
    ],
)
def test_the_plan_fills_what_the_spec_leaves_out_and_records_what_it_gave(given, world, expected):
    spec = load_spec(None, [f"parallel.{k}={v}" for k, v in {**given, "world_size": world}.items()])
    plan = spec.parallel.batch_plan()
    assert (plan.global_batch_size, plan.micro_batch_size, plan.grad_accum_steps, plan.world_size) == (*expected, world)
    assert tuple(spec.parallel.model_dump(include=set(plan.sizes())).values()) == expected
    assert spec.parallel.model_fields_set == {*given, "world_size"}  # derived sizes are not "given" (a ds_config file may set them)
    assert (build_ds_config(spec)["train_micro_batch_size_per_gpu"], build_ds_config(spec)["gradient_accumulation_steps"]) == expected[1:]
    pinned = pinned_ds_config(spec)
    assert ("train_micro_batch_size_per_gpu" in pinned) == bool(given)


def test_a_plan_is_immutable_and_always_consistent():
    plan = BatchPlan(32, 8, 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.micro_batch_size = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="inconsistent"):
        BatchPlan(30, 8, 2, 2)
    assert plan.with_micro(4) == BatchPlan(32, 4, 4, 2)  # the global batch stays, accumulation takes up the rest
    assert plan.with_micro(4, accumulation=1) == BatchPlan(8, 4, 1, 2)  # the memory probe: no accumulation
    assert plan.per_rank_batch == 16


def test_the_launch_and_the_micro_batch_search_go_through_the_plan():
    spec = load_spec(None, ["parallel.global_batch_size=24", "parallel.micro_batch_size=4", "parallel.world_size=2"])
    plan = check_world_size(spec, 2)
    assert plan == BatchPlan(24, 4, 3, 2)
    with pytest.raises(AamInputError, match="does not fit the 3 rank"):
        check_world_size(spec, 3)
    searched, config = with_batch_plan(spec, {**build_ds_config(spec), "train_batch_size": 24}, plan.with_micro(12))
    assert searched.parallel.batch_plan(2) == BatchPlan(24, 12, 1, 2)
    assert "train_batch_size" not in config and (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (12, 1)
    assert spec.parallel.micro_batch_size == 4  # the launched spec itself is unchanged


def test_nothing_writes_pydantics_private_fields_set():
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "aam_ds").rglob("*.py") if "__pydantic_fields_set__" in path.read_text()]
    assert offenders == []
