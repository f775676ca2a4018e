"""Regression target normaliser: mean / std per target, fitted on the training split only.

The statistics are buffers, so they travel with the model's state dict (checkpoints and the
consolidated export) and predictions can always be mapped back to the original units.
"""

from __future__ import annotations

import torch
from torch import nn


class TargetNormalizer(nn.Module):
    """``transform``: original units -> zero mean, unit variance; ``inverse``: back. Shapes ``[N, T]``."""

    def __init__(self, n_targets: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_targets))
        self.register_buffer("std", torch.ones(n_targets))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, targets: torch.Tensor, source: str = "training targets") -> "TargetNormalizer":
        """Fit on ``targets [N, T]`` (the training split). A constant target keeps std 1.

        Raises:
            ValueError: targets of the wrong shape, none, or non-finite (an internal contract: the
                sample metadata reader refuses missing targets with an AamInputError first).
        """
        targets = torch.as_tensor(targets, dtype=torch.float64)
        if targets.dim() == 1:
            targets = targets[:, None]
        if targets.dim() != 2 or targets.shape[1] != self.mean.numel():
            raise ValueError(
                f"{source}: expected [N, {self.mean.numel()}] targets (one column per regression target), got {tuple(targets.shape)}"
            )
        if targets.shape[0] == 0:
            raise ValueError(f"{source}: no training samples to fit the target normaliser on")
        if not torch.isfinite(targets).all():
            raise ValueError(f"{source}: targets contain NaN or infinite values (data.metadata refuses them first)")
        std = targets.std(dim=0, unbiased=False)
        self.mean.copy_(targets.mean(dim=0))
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        self.fitted.fill_(True)
        return self

    def transform(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets in original units ``[B, T]`` -> normalised units ``(y - mean) / std``."""
        return (targets - self.mean.to(targets.dtype)) / self.std.to(targets.dtype)

    def inverse(self, predictions: torch.Tensor) -> torch.Tensor:
        """Predictions in normalised units ``[B, T]`` -> original units ``y * std + mean``."""
        return predictions * self.std.to(predictions.dtype) + self.mean.to(predictions.dtype)
