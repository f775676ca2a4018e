"""Engine pieces without the full trainer: failure reporting and collective timeouts, checkpoint
rotation and ``latest``, the batch-layout check, the LR schedule, memory estimate and search."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_engine_pairwise import make_model, make_problem, pair_mse, run_ranks

from aam_ds.engine.memory import micro_batch_candidates, model_state_bytes, search_micro_batch
from aam_ds.engine.schedule import warmup_cosine
from aam_ds.engine.setup import check_world_size
from aam_ds.errors import AamInputError
from aam_ds.spec import RunSpec, ScheduleSpec


def _failing_rank(rank: int, world: int, port: int, log_dir: str) -> None:
    """Rank 1 fails before a collective; rank 0 waits in it and must give up within the timeout."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.stderr = open(Path(log_dir) / f"rank{rank}.err", "w", buffering=1)
    from aam_ds.engine.distributed import barrier, init_distributed, report_rank_failure

    with report_rank_failure(rank):
        init_distributed(timeout_s=10)
        if rank == 1:
            raise ValueError("metadata column 'age' has NaN")
        barrier()


@pytest.mark.slow
def test_a_failing_rank_is_named_and_its_peer_does_not_hang(tmp_path):
    start = time.monotonic()
    codes = run_ranks(_failing_rank, 2, str(tmp_path), timeout=120)
    assert codes[1] != 0 and codes[0] != 0
    assert time.monotonic() - start < 100
    err = (tmp_path / "rank1.err").read_text()
    assert "[rank 1] ValueError: metadata column 'age' has NaN" in err
    assert "[rank 0]" in (tmp_path / "rank0.err").read_text()


def _checkpoint_rank(rank: int, world: int, port: int, ckpt_dir: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"
    )
    import deepspeed

    from aam_ds.engine import checkpoint as ckpt
    from aam_ds.engine.distributed import init_distributed

    init_distributed(timeout_s=60)
    features, points = make_problem()
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": 2},
        "steps_per_print": 10**6,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
    }

    def engine():
        model = make_model()
        return deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)[0]

    trained = engine()
    tags = []
    for step in range(1, 4):
        idx = torch.arange(4 * step - 4, 4 * step)
        trained.backward(pair_mse(trained(features[idx]), torch.cdist(points[idx], points[idx])))
        trained.step()
        tags.append(ckpt.save_checkpoint(trained, Path(ckpt_dir), step, {"note": step}, keep_last=2))
    # a save that died half-way: its folder exists, but 'latest' was never moved to it
    (Path(ckpt_dir) / ckpt.step_tag(4)).mkdir()
    restored = engine()
    state = ckpt.load_checkpoint(restored, Path(ckpt_dir))
    consolidated = ckpt.consolidated_state_dict(trained, Path(ckpt_dir), tags[-1])
    torch.save(
        {
            "tags": tags,
            "state": state,
            "trained": trained.module.state_dict(),
            "restored": restored.module.state_dict(),
            "consolidated": consolidated,
        },
        out,
    )


@pytest.mark.slow
def test_checkpoints_rotate_and_latest_names_the_last_complete_one(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    assert run_ranks(_checkpoint_rank, 1, str(ckpt_dir), str(tmp_path / "out.pt")) == [0]
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert out["tags"] == ["step00000001", "step00000002", "step00000003"]
    assert (ckpt_dir / "latest").read_text().strip() == "step00000003"
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step")) == ["step00000002", "step00000003", "step00000004"]
    assert out["state"]["step"] == 3 and out["state"]["note"] == 3
    for name, value in out["trained"].items():
        assert torch.equal(out["restored"][name], value)
        assert torch.equal(out["consolidated"][name], value)


def test_a_world_size_that_does_not_fit_the_batch_is_refused():
    spec = RunSpec.model_validate({"parallel": {"global_batch_size": 16, "micro_batch_size": 8, "world_size": 2}})
    check_world_size(spec, 2)
    with pytest.raises(AamInputError, match="does not fit the 3 rank"):
        check_world_size(spec, 3)


def test_warmup_then_cosine_to_the_floor():
    factor = warmup_cosine(ScheduleSpec(steps=110, warmup_steps=10, min_lr_ratio=0.1))
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(60) == pytest.approx(0.55)  # half-way down the cosine: (1 + 0.1) / 2
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_zero_stages_partition_model_states():
    n, world = 1_000_000, 4
    full = model_state_bytes(n, world, 0, "fp32")
    assert full.device == 16 * n and full.offloaded == 0
    per_stage = [model_state_bytes(n, world, s, "fp32").device for s in range(4)]
    assert per_stage == sorted(per_stage, reverse=True)
    assert per_stage[3] * world == pytest.approx(full.device)
    mixed = model_state_bytes(n, world, 2, "bf16")
    assert mixed.device == pytest.approx(n * (2 + 14 / world))  # ZeRO paper: 2 + 14/W for mixed precision
    offloaded = model_state_bytes(n, world, 3, "bf16", offload_optimizer=True, offload_param=True)
    assert offloaded.device + offloaded.offloaded == pytest.approx(model_state_bytes(n, world, 3, "bf16").device)


def test_micro_batch_search_takes_the_largest_size_within_budget():
    measured = []

    def peak(m):
        measured.append(m)
        return None if m > 40 else 100.0 + 10.0 * m  # out of memory beyond 40

    every = list(range(1, 65))
    assert search_micro_batch(peak, budget_bytes=300.0, candidates=every) == 20
    assert search_micro_batch(peak, budget_bytes=10_000.0, candidates=every) == 40
    assert search_micro_batch(peak, budget_bytes=50.0, candidates=every) == 0
    assert search_micro_batch(peak, budget_bytes=10_000.0, candidates=every[:6]) == 6
    measured.clear()
    assert search_micro_batch(peak, budget_bytes=300.0, candidates=every[1:]) == 20
    assert search_micro_batch(peak, budget_bytes=115.0, candidates=every[1:]) == 0  # 1 would fit, but is not a candidate
    assert min(measured) == 2


def test_micro_batch_candidates_keep_the_global_batch():
    """Issue 16: the search trades micro batch against accumulation; it never changes the batch."""
    assert micro_batch_candidates(24, lower=2) == [2, 3, 4, 6, 8, 12, 24]
    assert micro_batch_candidates(7, lower=1) == [1, 7]
    assert micro_batch_candidates(1, lower=2) == []
    measured = []

    def peak(m):
        measured.append(m)
        return 10.0 * m

    assert search_micro_batch(peak, 85.0, micro_batch_candidates(24, 2)) == 8
    assert set(measured) <= set(micro_batch_candidates(24, 2))


def test_micro_batch_search_stops_at_its_time_cap_with_the_best_size_so_far():
    measured = []

    def peak(m):
        measured.append(m)
        return 1.0

    assert search_micro_batch(peak, 10.0, list(range(1, 100)), out_of_time=lambda: len(measured) >= 2) == 2
    assert measured == [1, 2]  # after the cap no further size is tried, but the first always is
    assert search_micro_batch(peak, 10.0, [3, 4], out_of_time=lambda: True) == 3


def test_peak_rss_sees_a_real_allocation():
    """In a fresh interpreter: in the test process, pages freed by earlier tests can stay resident and
    absorb the allocation without moving the peak."""
    code = (
        "import torch; from aam_ds.engine.memory import PeakMemory\n"
        "meter = PeakMemory(torch.device('cpu')); meter.reset(); base = meter.peak_bytes()\n"
        "block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched\n"
        "print(meter.peak_bytes() - base)\n"
    )
    grown = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown > 48 * 1024 * 1024


def _bf16_export_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"
    )
    import deepspeed

    from aam_ds.engine import checkpoint as ckpt
    from aam_ds.engine.distributed import init_distributed

    init_distributed(timeout_s=60)
    features, points = make_problem()
    model = make_model()
    engine = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        config={
            "train_micro_batch_size_per_gpu": 8,
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": 0},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
            "steps_per_print": 10**6,
        },
    )[0]
    for step in range(3):
        idx = torch.arange(8 * step, 8 * step + 8)
        engine.backward(pair_mse(engine(features[idx].bfloat16()), torch.cdist(points[idx], points[idx])))
        engine.step()
    consolidated = ckpt.consolidated_state_dict(engine, Path(out).parent, "unused")
    torch.save({"consolidated": consolidated, "module": engine.module.state_dict()}, out)


@pytest.mark.slow
def test_bf16_zero0_export_holds_the_fp32_master_weights(tmp_path):
    assert run_ranks(_bf16_export_rank, 1, str(tmp_path / "out.pt")) == [0]
    out = torch.load(tmp_path / "out.pt")
    for name, weight16 in out["module"].items():
        master = out["consolidated"][name]
        assert weight16.dtype == torch.bfloat16 and master.dtype == torch.float32
        assert torch.equal(master.bfloat16(), weight16)  # the bf16 weights are the masters, rounded
    assert any(not torch.equal(out["consolidated"][n], w.float()) for n, w in out["module"].items())


def test_a_timeout_met_while_handling_another_is_still_a_collective_timeout(monkeypatch):
    """gloo's first timeout says "Timed out ..."; a collective tried while handling it fails with
    "Application timeout caused pair closure": both, and the chain, are one collective timeout."""
    from aam_ds.engine import distributed

    monkeypatch.setattr(distributed, "_TIMEOUT_S", 8)
    try:
        try:
            raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 8000ms for recv operation to complete")
        except RuntimeError:
            raise RuntimeError("Application timeout caused pair closure")
    except RuntimeError as exc:
        chained = exc
    assert distributed.is_collective_timeout(chained)
    assert distributed.is_collective_timeout(RuntimeError("Application timeout caused pair closure"))
    assert not distributed.is_collective_timeout(RuntimeError("unexpected pos 128 vs 64"))  # a failed write is not one


def test_a_peer_that_closed_its_connection_is_a_lost_peer_not_a_timeout(monkeypatch):
    """gloo's words when the rank at the other end was killed (issue 18, seen in tests/test_multinode.py)."""
    from aam_ds.engine import distributed

    monkeypatch.setattr(distributed, "_TIMEOUT_S", 8)
    lost = RuntimeError(
        "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:3996. This is typically caused by a remote worker crashing."
    )
    assert distributed.is_peer_lost(lost) and distributed.is_peer_failure(lost)
    assert not distributed.is_collective_timeout(lost)
    assert not distributed.is_peer_failure(RuntimeError("unexpected pos 128 vs 64"))
