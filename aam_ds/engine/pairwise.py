"""Gathered pairwise loss: every pair of the global batch is supervised, across ranks.

Each rank embeds its own micro-batch ``[B, D]``. The embeddings are all-gathered with autograd
into the global batch ``[W*B, D]`` (rank-major), the sample indices likewise, and every rank
computes the same loss over all pairs of the global batch. The backward of the differentiable
all_gather sums, over ranks, the gradients that reach each rank's own rows (W identical losses,
so W x the true gradient); DeepSpeed's averaging over W ranks then leaves exactly the gradient of
one process over the concatenated batch.

With gradient accumulation the global batch of an optimizer step spans ``grad_accum_steps``
micro-steps, which are never in memory at once. :func:`gradient_cache_step` still uses every
pair of it, exactly (a gradient cache, Gao et al. 2021): pass 1 embeds every micro-batch without
autograd and all-gathers the embeddings ``[W*A*B, D]``; the pairwise loss over them gives the
gradient of the loss with respect to each embedding; pass 2 re-runs each micro-batch with
autograd (same masking and dropout draws) and backpropagates that cached gradient, with the
micro-batch's own per-sample losses, through ``engine.backward`` / ``engine.step``, so DeepSpeed's
accumulation boundaries, ZeRO partitioning and loss scaling work as for any micro-step. The cost
is one extra forward per micro-step without autograd, and ``[A*B, D]`` cached embeddings.

References: Gao, Zhang, Han & Callan (2021), Scaling deep contrastive learning batch size under
memory limited setup, RepL4NLP (arXiv:2101.06983).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from aam_ds.engine.distributed import process_rank, process_world_size

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# one micro-batch's (sample embeddings [B, D], table rows int64 [B], weighted per-sample loss (scalar),
# detached per-sample loss terms by name)
MicroOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """All-gather ``[B, ...]`` from every rank into ``[W*B, ...]`` (rank-major), keeping autograd."""
    if process_world_size() == 1:
        return local
    return torch.cat(dist_fn.all_gather(local.contiguous()), dim=0)


def gather_no_grad(local: torch.Tensor) -> torch.Tensor:
    """All-gather a tensor that needs no gradient (e.g. sample indices ``[B]``) into ``[W*B, ...]``."""
    if process_world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(process_world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts, dim=0)


def gathered_pairwise_loss(
    embedding: torch.Tensor,
    sample_index: torch.Tensor,
    target_distances: Callable[[torch.Tensor], torch.Tensor],
    pair_loss: PairLoss,
) -> torch.Tensor:
    """Loss over all pairs of the global batch; the same value on every rank.

    Args:
        embedding: ``[B, D]`` this rank's sample embeddings (any float dtype; computed in fp32).
        sample_index: ``int64 [B]`` rows of these samples in the feature table.
        target_distances: maps global sample indices ``[W*B]`` to target distances ``[W*B, W*B]``.
        pair_loss: ``(embeddings [N, D], targets [N, N]) -> scalar`` over pairs i<j.
    """
    global_embedding = gather_with_grad(embedding.float())
    global_index = gather_no_grad(sample_index)
    return pair_loss(global_embedding, target_distances(global_index).float())


def gradient_cache_step(
    engine: Any,
    accum: int,
    forward: Callable[[int], MicroOutputs],
    pairwise_weight: float,
    target_distances: Callable[[torch.Tensor], torch.Tensor],
    pair_loss: PairLoss,
) -> dict[str, float]:
    """One optimizer step of ``accum`` micro-steps whose pairwise loss covers every pair of the
    step's global batch (all ranks, all micro-steps), by a gradient cache (see the module notes).

    Parameters
    ----------
    engine : deepspeed.DeepSpeedEngine
        In training mode; ``forward`` runs its module. Its buffers (e.g. running statistics) are
        restored after pass 1, so each micro-batch updates them once, as without the cache.
    accum : int
        Micro-steps per optimizer step (the engine's ``gradient_accumulation_steps``).
    forward : callable
        ``forward(micro) -> (embedding [B, D], sample_index int64 [B], weighted per-sample loss,
        detached terms)`` for micro-step ``micro`` of this rank; called twice per micro-step and
        must draw the same random numbers both times (re-seed inside it).
    pairwise_weight : float
        Weight of the pairwise loss in the total.
    target_distances, pair_loss
        As for :func:`gathered_pairwise_loss`.

    Returns
    -------
    dict
        ``loss`` (``pairwise_weight`` x pairwise + the micro-steps' mean weighted per-sample loss),
        ``pairwise`` (the same on every rank) and each per-sample term's mean over micro-steps.

    Notes
    -----
    DeepSpeed divides each micro-step's loss by ``accum`` and averages gradients over the W ranks,
    so each micro-step backpropagates ``W * accum * pairwise_weight * <embedding, cached gradient>``:
    the sum over ranks and micro-steps is then exactly the gradient of the one-process loss.
    """
    with torch.no_grad(), buffers_kept(engine.module):
        first = [forward(micro) for micro in range(accum)]
    sizes = [len(embedding) for embedding, *_ in first]
    pairwise, grad = pairwise_loss_and_grad(
        torch.cat([e.float() for e, *_ in first]), torch.cat([i for _, i, *_ in first]), target_distances, pair_loss
    )
    scale = pairwise_weight * accum * process_world_size()
    totals = {"loss": pairwise_weight * pairwise, "pairwise": pairwise}
    for micro, cached in enumerate(grad.split(sizes)):
        embedding, _, sample_loss, terms = forward(micro)
        engine.backward(sample_loss + scale * (embedding.float() * cached).sum())
        engine.step()
        totals["loss"] += sample_loss.item() / accum
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.item() / accum
    return totals


def pairwise_loss_and_grad(
    embedding: torch.Tensor, sample_index: torch.Tensor, target_distances: Callable[[torch.Tensor], torch.Tensor], pair_loss: PairLoss
) -> tuple[float, torch.Tensor]:
    """The pairwise loss over the embeddings ``[n, D]`` of every rank (all-gathered, no autograd to
    the model) and its gradient ``[n, D]`` with respect to this rank's rows; every rank must call it
    with the same ``n``."""
    gathered = gather_no_grad(embedding.detach()).requires_grad_(True)
    with torch.enable_grad():
        loss = pair_loss(gathered, target_distances(gather_no_grad(sample_index)).float())
        (grad,) = torch.autograd.grad(loss, gathered)
    rank = process_rank()
    return loss.item(), grad[rank * len(embedding) : (rank + 1) * len(embedding)]


@contextmanager
def buffers_kept(module: torch.nn.Module) -> Iterator[None]:
    """Restore ``module``'s buffers (running statistics, counters) as they were on entry."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
