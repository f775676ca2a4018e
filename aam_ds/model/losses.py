"""Training losses. All are pure functions of tensors (no process groups, no module state).

- ``pairwise_distance_loss``: Euclidean distances between sample embeddings regressed onto the
  target distances over every pair i<j. No squashing of the predicted distance, so any target range
  is reachable; exact gradient everywhere, 0 (the minimum-norm subgradient) at coincident embeddings.
- ``masked_nucleotide_loss``: cross-entropy on masked positions only.
- ``abundance_loss``: MSE of predicted vs true log relative abundance on present ASVs.
- ``regression_loss`` / ``classification_loss``: the fine-tuning task.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from aam_ds.model.heads import log_relative_abundance
from aam_ds.model.masking import IGNORE_INDEX


def embedding_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """embeddings ``[B, D]`` -> Euclidean distance matrix ``[B, B]`` (float32 or wider).

    Computed from coordinate differences (not the ``|a|^2 + |b|^2 - 2ab`` expansion), so
    coincident embeddings give exactly 0 and the gradient there is 0 instead of NaN; memory ``B^2``.
    """
    x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


def pairwise_distance_loss(embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i<j of ``(||e_i - e_j|| - target_ij)^2``.

    Args:
        embeddings: ``[B, D]`` sample embeddings (the whole global batch when gathered across ranks).
        target: ``[B, B]`` target distances (symmetric, zero diagonal; only i<j is read).
    """
    b = embeddings.shape[0]
    if embeddings.dim() != 2 or tuple(target.shape) != (b, b):
        raise ValueError(
            f"pairwise_distance_loss: embeddings {tuple(embeddings.shape)} and target {tuple(target.shape)} do not "
            "match (embeddings [B, D], target [B, B])"
        )
    if b < 2:
        raise ValueError(f"pairwise_distance_loss: a batch of {b} sample has no pairs (at least 2 needed)")
    i, j = torch.triu_indices(b, b, offset=1, device=embeddings.device)
    predicted = embedding_distances(embeddings)[i, j]
    return F.mse_loss(predicted, target[i, j].to(predicted.dtype))


def masked_nucleotide_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits [..., V]`` against ``labels [...]`` on masked positions (labels != IGNORE_INDEX).

    A batch without any masked position gives 0 (with a gradient path), not NaN.
    """
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp_min(1)


@torch.no_grad()
def masked_nucleotide_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of masked positions whose most likely token is the original one (NaN when none is masked)."""
    selected = labels != IGNORE_INDEX
    return (logits.argmax(dim=-1)[selected] == labels[selected]).float().mean()


def abundance_loss(predicted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """MSE of ``predicted [B, A]`` vs the true log relative abundance of ``counts [B, A]`` on present ASVs."""
    present = counts > 0
    squared = (predicted.float() - log_relative_abundance(counts)) ** 2
    return (squared * present).sum() / present.sum().clamp_min(1)


def regression_loss(predicted: torch.Tensor, target: torch.Tensor, kind: Literal["huber", "mse", "mae"] = "huber") -> torch.Tensor:
    """``predicted`` and ``target`` ``[B, T]`` in normalised units; Huber uses delta 1 (one std)."""
    predicted, target = predicted.float(), target.float().reshape(predicted.shape)
    if kind == "huber":
        return F.huber_loss(predicted, target, delta=1.0)
    if kind == "mse":
        return F.mse_loss(predicted, target)
    if kind == "mae":
        return F.l1_loss(predicted, target)
    raise ValueError(f"unknown regression loss {kind!r}")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``logits [B, K]`` against ``labels int64 [B]``, optionally class-weighted ``[K]``."""
    weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels.reshape(-1), weight=weight)


def inverse_frequency_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[K]`` weights ``N / (K * count_k)`` from the training labels (mean weight 1 over samples); 0 for absent classes."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=n_classes).double()
    weights = torch.where(counts > 0, labels.numel() / (n_classes * counts.clamp_min(1)), 0.0)
    return weights.float()
