"""A fine-tuned AAM averaged with a linear probe on its pretrained model's frozen sample embeddings.

The probe is a standardise + linear map (logistic or ridge regression, fitted by the engine,
:mod:`aam_ds.engine.probe_cv`) on the pretrained model's sample embedding. The ensemble's output
is the weighted mean ``w * fine-tuned + (1 - w) * probe`` of the two models' predictions: class
probabilities (classification) or values in the target's original units (regression), with ``w``
chosen by inner cross-validation on the training samples. It is called like
:meth:`AAMModel.forward` for the ``task`` output, which it returns in the units the fine-tuned
model's own head uses (log-probabilities, whose softmax is the averaged probabilities; or
normalised values), so the prediction code path treats both alike.

An ensemble of two differently trained models is better calibrated than either alone: on a small
table the fine-tuned model's logits are overconfident and shift from fold to fold, the probe's
are not (docs/benchmarks.md, session 7).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aam_ds.model.aam import AAMModel


class LinearProbe(nn.Module):
    """``(embedding - mean) / scale @ coef.T + intercept``: ``[B, D] -> [B, O]`` (float32 buffers).

    ``coef``: ``[O, D]``: a class's logit per row (a binary logistic probe as the two rows ``[0, w]``), or a regression target's value."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor):
        super().__init__()
        for name, value in (("mean", mean), ("scale", scale), ("coef", coef), ("intercept", intercept)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Sample embeddings ``[B, D]`` -> the probe's outputs ``float32 [B, O]`` (logits or original units)."""
        return ((embedding.float() - self.mean) / self.scale) @ self.coef.T + self.intercept


class ProbeEnsemble(nn.Module):
    """``weight`` x the fine-tuned model + (1 - ``weight``) x the probe on the pretrained embedding.

    Args:
        finetuned: the fine-tuned AAMModel (with its task head).
        pretrained: the pretrained AAMModel the probe reads (no task head; frozen, eval mode).
        probe: the fitted :class:`LinearProbe`.
        weight: the fine-tuned model's share, in [0, 1].
    """

    def __init__(self, finetuned: AAMModel, pretrained: AAMModel, probe: LinearProbe, weight: float):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"ProbeEnsemble: weight must be in [0, 1], got {weight}")
        self.finetuned, self.pretrained, self.probe, self.weight = finetuned, pretrained, probe, float(weight)

    @property
    def target_normalizer(self):
        """The fine-tuned model's target normaliser (None for classification): what predict de-normalises with."""
        return self.finetuned.target_normalizer

    def forward(self, tokens: torch.Tensor, counts: torch.Tensor, want: Any = ("task",), covariates: torch.Tensor | None = None):
        """``{"task": [B, T] normalised values or [B, C] log-probabilities}``; any other output
        (``sample_embedding``, ...) is the fine-tuned model's."""
        want = set(want)
        out = dict(self.finetuned(tokens, counts, want, covariates)) if want else {}
        if "task" in want:
            embedding = self.pretrained(tokens, counts, {"sample_embedding"})["sample_embedding"]
            out["task"] = self.mix(out["task"].float(), self.probe(embedding))
        return out

    def mix(self, task: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
        """The weighted mean of the fine-tuned head's output ``task`` and the probe's output ``probe``."""
        w, norm = self.weight, self.target_normalizer
        if norm is not None:  # regression: the probe predicts original units
            return w * task + (1 - w) * norm.transform(probe)
        mixed = w * task.softmax(dim=-1) + (1 - w) * probe.softmax(dim=-1)
        return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log()
