"""The training objective: which model outputs a step needs and how the weighted losses combine.

Pairwise loss: over the global batch (gathered across ranks, the same value on every rank; with
gradient accumulation over all micro-steps of the optimizer step, see
:func:`aam_ds.engine.pairwise.gradient_cache_step`). Masked-nucleotide, abundance and task losses:
over this rank's micro-batch; DeepSpeed's gradient averaging turns them into the mean over ranks
and micro-steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aam_ds.engine.pairwise import MicroOutputs, gathered_pairwise_loss
from aam_ds.errors import AamInputError
from aam_ds.model import losses
from aam_ds.model.blocks import asv_hash_buckets
from aam_ds.model.masking import IGNORE_INDEX, mask_nucleotides
from aam_ds.model.packing import nucleotide_rows
from aam_ds.spec import LossSpec, ModelSpec


def required_outputs(loss: LossSpec) -> frozenset[str]:
    """The forward outputs the spec's active losses need (a loss with weight 0 needs nothing)."""
    want = set()
    if loss.pairwise_weight > 0:
        want.add("sample_embedding")
    if loss.nucleotide_weight > 0:
        want.add("nucleotide_logits")
    if loss.abundance_weight > 0:
        want.add("abundance")
    if loss.task != "none" and loss.task_weight > 0:
        want.add("task")
    return frozenset(want)


def check_loss_compatible(model: ModelSpec, loss: LossSpec) -> None:
    """Refuse loss settings the model cannot learn from meaningfully."""
    if loss.abundance_weight > 0 and model.use_abundance:
        raise AamInputError(
            "loss.abundance_weight",
            "abundance prediction is on while model.use_abundance=true feeds the same abundances in, so the loss only measures copying",
            "set model.use_abundance=false, or loss.abundance_weight=0",
        )


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
        total, to backpropagate) and each active component (detached). The pairwise loss covers the
        pairs of this micro-step's global batch (all ranks' micro-batches)."""
        out, labels = self.forward(model, batch, generator)
        parts: dict[str, tuple[float, torch.Tensor]] = {}
        if "sample_embedding" in self.want:
            parts["pairwise"] = (
                self.loss.pairwise_weight,
                gathered_pairwise_loss(
                    out["sample_embedding"], batch["sample_index"], self.distance_target.batch, losses.pairwise_distance_loss
                ),
            )
        parts.update(self.sample_parts(model, out, batch, labels))
        total = sum(weight * value for weight, value in parts.values())
        return {"loss": total, **{name: value.detach() for name, (_, value) in parts.items()}}

    def forward(
        self, model: Any, batch: dict[str, torch.Tensor], generator: torch.Generator, valid: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The model's outputs for ``batch`` and, when the masked-nucleotide loss is on, the true tokens
        of the masked positions (``int64 [M, L]``, else None): the sample path reads the unmasked ASVs,
        the nucleotide head one copy of each distinct ASV of the samples marked ``valid`` (``bool
        [B]``, default all), masked with ``generator`` (:func:`aam_ds.model.packing.nucleotide_rows`)."""
        tokens, counts, masked, labels = batch["tokens"], batch["counts"], None, None
        if "nucleotide_logits" in self.want and self.loss.mask_sample_path:
            buckets = _unwrap(model).config.asv_identity_buckets
            asv_ids = asv_hash_buckets(tokens, buckets) if buckets else None  # the learned vector of the unmasked ASV
            masked, labels = mask_nucleotides(tokens, self.loss.mask_fraction, generator)
            if valid is not None:
                labels = labels.masked_fill(~valid[:, None, None], IGNORE_INDEX)
            return model(masked, counts, self.want, batch.get("covariates"), asv_ids), labels
        if "nucleotide_logits" in self.want:
            rows = nucleotide_rows(tokens, counts if valid is None else counts * valid[:, None])
            masked, labels = mask_nucleotides(rows, self.loss.mask_fraction, generator)
        return model(tokens, counts, self.want, batch.get("covariates"), nucleotide_tokens=masked), labels

    @property
    def weights(self) -> dict[str, float]:
        """Each loss's weight in the total, by the name its term carries (``pairwise``, ``nucleotide``, ``abundance``, ``task``)."""
        loss = self.loss
        return {
            "pairwise": loss.pairwise_weight,
            "nucleotide": loss.nucleotide_weight,
            "abundance": loss.abundance_weight,
            "task": loss.task_weight,
        }

    def weighted_total(self, terms: dict[str, float]) -> float:
        """The weighted sum of the loss terms present in ``terms`` (e.g. evaluation's means over a split)."""
        return sum(weight * terms[name] for name, weight in self.weights.items() if name in terms)

    def sample_parts(
        self, model: Any, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """The per-sample loss terms of this micro-batch, ``name -> (weight, scalar)``: masked
        nucleotides, abundance, task (every active one but the pairwise loss)."""
        parts = {name: (self.weights[name], value) for name, value in self.reconstruction_terms(out, batch, labels).items()}
        if "task" in out:
            parts["task"] = (self.loss.task_weight, self.task_loss(model, out["task"], batch["targets"]))
        return parts

    def reconstruction_terms(
        self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The unweighted masked-nucleotide (when ``labels`` is given) and abundance (when the model
        gave it) losses of these samples, each a scalar mean over them."""
        terms = {}
        if labels is not None:
            terms["nucleotide"] = losses.masked_nucleotide_loss(out["nucleotide_logits"], labels)
        if "abundance" in out:
            terms["abundance"] = losses.abundance_loss(out["abundance"], batch["counts"])
        return terms

    def cached_pairwise_forward(self, model: Any, batch: dict[str, torch.Tensor], generator: torch.Generator) -> MicroOutputs:
        """This micro-batch as :func:`~aam_ds.engine.pairwise.gradient_cache_step` takes it: its sample
        embeddings ``[B, D]``, table rows ``int64 [B]``, weighted per-sample loss (scalar) and the
        detached per-sample terms."""
        out, labels = self.forward(model, batch, generator)
        parts = self.sample_parts(model, out, batch, labels)
        weighted = sum((weight * value for weight, value in parts.values()), out["sample_embedding"].new_zeros(()))
        return out["sample_embedding"], batch["sample_index"], weighted, {name: value.detach() for name, (_, value) in parts.items()}

    def task_loss(self, model: Any, predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task loss of ``predicted`` against ``targets``: classification loss (class weights), or the regression loss in normalised units."""
        if self.loss.task == "classification":
            return losses.classification_loss(predicted, targets, self.class_weights)
        normalizer = _unwrap(model).target_normalizer
        return losses.regression_loss(predicted, normalizer.transform(targets.float()), self.loss.regression_loss)


def _unwrap(model: Any) -> torch.nn.Module:
    return getattr(model, "module", model)
