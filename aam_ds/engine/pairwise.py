"""Gathered pairwise loss: every pair of the global batch is supervised, across ranks.

Each rank embeds its own micro-batch ``[B, D]``. The embeddings are all-gathered with autograd
into the global batch ``[W*B, D]`` (rank-major), the sample indices likewise, and every rank
computes the same loss over all pairs of the global batch. The backward of the differentiable
all_gather sums, over ranks, the gradients that reach each rank's own rows (W identical losses,
so W x the true gradient); DeepSpeed's averaging over W ranks then leaves exactly the gradient of
one process over the concatenated batch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """All-gather ``[B, ...]`` from every rank into ``[W*B, ...]`` (rank-major), keeping autograd."""
    if _world_size() == 1:
        return local
    return torch.cat(dist_fn.all_gather(local.contiguous()), dim=0)


def gather_no_grad(local: torch.Tensor) -> torch.Tensor:
    """All-gather a tensor that needs no gradient (e.g. sample indices ``[B]``) into ``[W*B, ...]``."""
    if _world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(_world_size())]
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
