"""The training objective: which model outputs a step needs and how the weighted losses combine.

Pairwise loss: over the global batch (gathered across ranks, the same value on every rank).
Masked-nucleotide, abundance and task losses: over this rank's micro-batch; DeepSpeed's gradient
averaging turns them into the mean over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aam_ds.engine.pairwise import gathered_pairwise_loss
from aam_ds.model import losses
from aam_ds.model.aam import required_outputs
from aam_ds.model.blocks import asv_hash_buckets
from aam_ds.model.masking import mask_nucleotides
from aam_ds.spec import LossSpec


@dataclass
class Objective:
    """Weighted sum of the active losses.

    ``distance_target``: a DistanceTarget (``batch(sample_index [N]) -> [N, N]``), needed when the
    pairwise loss is on. ``class_weights``: ``[K]`` for weighted classification, else None.
    """

    loss: LossSpec
    distance_target: Any = None
    class_weights: torch.Tensor | None = None

    @property
    def want(self) -> frozenset[str]:
        return required_outputs(self.loss)

    def __call__(self, model: Any, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Forward ``batch`` (on the model's device) through ``model``; returns ``loss`` (the weighted
        total, to backpropagate) and each active component (detached)."""
        tokens, labels, asv_ids = batch["tokens"], None, None
        if "nucleotide_logits" in self.want:
            asv_ids = unmasked_asv_ids(model, tokens)
            tokens, labels = mask_nucleotides(tokens, self.loss.mask_fraction, generator)
        out = model(tokens, batch["counts"], self.want, batch.get("covariates"), asv_ids)
        parts: dict[str, tuple[float, torch.Tensor]] = {}
        if "sample_embedding" in self.want:
            parts["pairwise"] = (self.loss.pairwise_weight, gathered_pairwise_loss(
                out["sample_embedding"], batch["sample_index"], self.distance_target.batch, losses.pairwise_distance_loss
            ))  # fmt: skip
        if labels is not None:
            parts["nucleotide"] = (self.loss.nucleotide_weight, losses.masked_nucleotide_loss(out["nucleotide_logits"], labels))
        if "abundance" in out:
            parts["abundance"] = (self.loss.abundance_weight, losses.abundance_loss(out["abundance"], batch["counts"]))
        if "task" in out:
            parts["task"] = (self.loss.task_weight, self.task_loss(model, out["task"], batch["targets"]))
        total = sum(weight * value for weight, value in parts.values())
        return {"loss": total, **{name: value.detach() for name, (_, value) in parts.items()}}

    def task_loss(self, model: Any, predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss.task == "classification":
            return losses.classification_loss(predicted, targets, self.class_weights)
        normalizer = _unwrap(model).target_normalizer
        return losses.regression_loss(predicted, normalizer.transform(targets.float()), self.loss.regression_loss)


def unmasked_asv_ids(model: Any, tokens: torch.Tensor) -> torch.Tensor | None:
    """Identity buckets ``int64 [B, A]`` of the ASVs before their nucleotides are masked (None when
    the model has no identity path): masking must not change which learned vector an ASV gets."""
    buckets = _unwrap(model).spec.asv_identity_buckets
    return asv_hash_buckets(tokens, buckets) if buckets else None


def _unwrap(model: Any) -> torch.nn.Module:
    return getattr(model, "module", model)
