"""Optimizer steps and their pieces, shared by the training loop and the micro-batch probe.

- :func:`build_engine` / :func:`parameter_groups`: the DeepSpeed engine over the trainable
  parameters (with ``optim.encoder_lr_scale``, two learning-rate groups);
- :func:`train_batches`: this rank's resumable stream of training micro-batches;
- :func:`seed_micro_step`: masking (a generator) and dropout (the global RNG) seeded from (seed, micro-step, rank) alone;
- :func:`optimizer_step`: one optimizer step (``grad_accum_steps`` micro-steps; the pairwise loss
  over the whole global batch of the step);
- :func:`find_micro_batch`: the micro-batch search's probe, which runs real steps of candidate
  sizes (the search itself and the memory estimate are in :mod:`aam_ds.engine.memory`).
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Iterator

import deepspeed
import torch
from torch.utils.data import DataLoader

from aam_ds.data.augment import AugmentedDataset
from aam_ds.data.dataset import collate, to_device
from aam_ds.data.prepare import PreparedData
from aam_ds.engine.batches import DataPosition, GlobalBatchSampler
from aam_ds.engine.distributed import DistContext, all_reduce_max
from aam_ds.engine.memory import (
    GIB,
    PeakMemory,
    is_out_of_memory,
    memory_budget_gib,
    micro_batch_candidates,
    search_micro_batch,
    with_batch_plan,
)
from aam_ds.engine.objective import Objective
from aam_ds.engine.pairwise import gradient_cache_step
from aam_ds.engine.schedule import scheduler_factory
from aam_ds.errors import AamInputError
from aam_ds.model import losses
from aam_ds.model.aam import AAMModel
from aam_ds.spec import BatchPlan, RunSpec

MEMORY_SEARCH_CAP_S = 300.0  # the micro-batch search stops probing after this long and keeps the best size so far


def build_engine(model: AAMModel, spec: RunSpec, ds_config: dict[str, Any]) -> Any:
    """The DeepSpeed engine of ``model`` (parameter groups, the spec's LR schedule unless ``ds_config`` has one)."""
    params = parameter_groups(model, spec.optim.lr, spec.optim.encoder_lr_scale)
    scheduler = None if "scheduler" in ds_config else scheduler_factory(spec.schedule)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config, lr_scheduler=scheduler)
    return engine


def parameter_groups(model: AAMModel, lr: float, encoder_lr_scale: float) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters; with a task head and ``encoder_lr_scale`` < 1, two optimizer groups:
    the head at ``lr``, everything else at ``lr * encoder_lr_scale`` (the schedule scales both)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if model.task_head is None or encoder_lr_scale == 1.0:
        return [p for _, p in trainable]
    head = [p for name, p in trainable if name.startswith("task_head.")]
    encoder = [p for name, p in trainable if not name.startswith("task_head.")]
    return [group for group in ({"params": head, "lr": lr}, {"params": encoder, "lr": lr * encoder_lr_scale}) if group["params"]]


def seed_micro_step(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """Seed one micro-step's randomness from (seed, micro-step, rank) alone, so a resumed run and the
    gradient cache's second pass repeat it: returns the generator nucleotide masking draws from,
    after seeding torch's global RNG with the same value, which dropout, attention dropout and
    ASV-identity dropout draw from (they take no generator)."""
    value = (seed * 1_000_003 + micro_step) * 1009 + rank
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def train_batches(
    data: PreparedData, spec: RunSpec, ctx: DistContext, micro: int, start: DataPosition = DataPosition()
) -> tuple[GlobalBatchSampler, Iterator[dict[str, torch.Tensor]]]:
    """This rank's sampler and iterator over its training micro-batches from ``start`` (augmented
    when the spec asks); ``sampler.position_after(k)`` is the stream's place after ``k`` micro-steps."""
    dataset, augment = data.dataset("train"), spec.data.augment
    sampler = GlobalBatchSampler(len(dataset), micro, ctx.world_size, ctx.rank, spec.schedule.seed, start, augment.active)
    if augment.active:
        dataset = AugmentedDataset(dataset, augment, spec.schedule.seed)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=spec.data.num_workers, pin_memory=ctx.device.type == "cuda"
    )
    return sampler, iter(loader)


def optimizer_step(engine: Any, batches: Iterator, objective: Objective, ctx: DistContext, spec: RunSpec, step: int) -> dict[str, float]:
    """One optimizer step (``grad_accum_steps`` micro-steps); the mean loss components over micro-steps.

    With accumulation and the pairwise loss on, the pairwise loss covers every pair of the step's
    global batch (:func:`~aam_ds.engine.pairwise.gradient_cache_step`), as it does without accumulation.
    """
    accum = spec.parallel.grad_accum_steps
    micro_batches = [to_device(next(batches), ctx.device) for _ in range(accum)]

    def generator(micro: int) -> torch.Generator:
        return seed_micro_step(spec.schedule.seed, step * accum + micro, ctx.rank)

    if accum > 1 and "sample_embedding" in objective.want:
        return gradient_cache_step(
            engine,
            accum,
            lambda micro: objective.cached_pairwise_forward(engine, micro_batches[micro], generator(micro)),
            objective.loss.pairwise_weight,
            objective.distance_target.batch,
            losses.pairwise_distance_loss,
        )
    totals: dict[str, torch.Tensor] = {}
    for micro, batch in enumerate(micro_batches):
        parts = objective(engine, batch, generator(micro))
        engine.backward(parts["loss"])
        engine.step()
        for name, value in parts.items():  # kept on the device: one host synchronisation per step, below
            totals[name] = totals.get(name, 0.0) + value.detach().float() / accum
    return dict(zip(totals, torch.stack(list(totals.values())).tolist()))


def probe_peak(
    spec: RunSpec,
    ds_config: dict[str, Any],
    data: PreparedData,
    model_factory: Any,
    objective: Objective,
    ctx: DistContext,
    meter: PeakMemory,
) -> float:
    """This rank's peak memory (bytes) over 2 real training steps of a fresh engine with the batch
    layout of ``spec``; infinite when they run out of memory (any other error is raised)."""
    meter.reset()
    engine = None
    try:
        engine = build_engine(model_factory(), spec, ds_config)
        _, batches = train_batches(data, spec, ctx, spec.parallel.micro_batch_size)
        for step in range(2):
            optimizer_step(engine, batches, objective, ctx, spec, step)
        return meter.peak_bytes()
    except Exception as exc:  # only out-of-memory means "does not fit"
        if not is_out_of_memory(exc):
            raise
        return float("inf")
    finally:
        del engine
        gc.collect()


def find_micro_batch(
    spec: RunSpec,
    ds_config: dict[str, Any],
    plan: BatchPlan,
    data: PreparedData,
    model_factory: Any,
    objective: Objective,
    ctx: DistContext,
) -> BatchPlan:
    """``plan`` with the largest micro batch whose real training steps (all active losses, this ZeRO stage)
    stay under ``parallel.max_memory_gb`` per rank, among those that keep the global batch (micro x
    accumulation x ranks); every rank agrees on the worst rank's peak. Rank 0 prints each probe; the
    search stops probing after ``MEMORY_SEARCH_CAP_S`` seconds."""
    say = print if ctx.is_main else (lambda *args, **kwargs: None)
    meter = PeakMemory(ctx.device)
    per_rank = plan.per_rank_batch
    lower = 2 if spec.loss.pairwise_weight > 0 else 1  # the pairwise loss needs pairs on every rank
    budget = memory_budget_gib(spec.parallel.max_memory_gb, ctx.device, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)))
    candidates = micro_batch_candidates(per_rank, lower)
    say(
        f"memory search: largest micro batch among {candidates} (global batch {plan.global_batch_size} kept) "
        f"within {budget:.2f} GiB per rank, 2 real steps each, at most {MEMORY_SEARCH_CAP_S:.0f} s",
        flush=True,
    )
    start = time.perf_counter()

    def peak_for(micro: int) -> float | None:
        # no accumulation while probing: each step reaches the optimizer (whose states count), as every
        # accumulation boundary does
        probe_spec, probe_config = with_batch_plan(spec, ds_config, plan.with_micro(micro, accumulation=1))
        peak = all_reduce_max(probe_peak(probe_spec, probe_config, data, model_factory, objective, ctx, meter), ctx.device)
        say(
            f"memory search: micro batch {micro}: "
            + ("out of memory" if peak == float("inf") else f"peak {peak / GIB:.2f} GiB, {'fits' if peak <= budget * GIB else 'too large'}")
            + f" ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        return None if peak == float("inf") else peak

    def out_of_time() -> bool:
        return all_reduce_max(time.perf_counter() - start, ctx.device) > MEMORY_SEARCH_CAP_S

    micro = search_micro_batch(peak_for, budget * GIB, candidates, out_of_time)
    if micro == 0:
        raise AamInputError(
            "parallel.max_memory_gb",
            f"even a micro batch of {lower} needs more than {budget:.2f} GiB per rank",
            "raise the budget, use a higher ZeRO stage or offload, or a smaller model",
        )
    say(
        f"memory search: micro batch {micro} x accumulation {per_rank // micro} ({time.perf_counter() - start:.0f} s"
        + (", time cap reached" if out_of_time() else "")
        + ")",
        flush=True,
    )
    return plan.with_micro(micro)
