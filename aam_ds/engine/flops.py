"""Analytic floating-point operations of a training step of :class:`~aam_ds.model.aam.AAMModel`,
from the batch actually seen, for model-FLOPs utilisation (MFU).

Counted: the matrix products (2 FLOPs per multiply-add) of every linear layer, attention
(``Q K^T`` and ``weights V``), attention pooling and the heads a step asks for. Not counted:
embedding look-ups, LayerNorms, softmax, activations, losses (a few per cent at most). A training
step costs 3 forward passes (the backward pass computes gradients of both inputs and weights:
twice the forward), the convention of Kaplan et al. 2020 and of MFU (Chowdhery et al. 2022).

Two counts per batch (:class:`BatchFlops`):

- ``model``: what the model needs, each sample with its own present ASVs and each distinct ASV
  of the batch once with its own nucleotides (no padding, no repeated encoding of an ASV that
  several samples hold): the numerator of MFU, so that removing waste shows as a faster step at
  the same work, never as a utilisation above the hardware's;
- ``executed``: what the batch's layout computes (every encoded ASV to the batch's sequence
  length ``L``, every sample to the batch's ASV count ``A``; copies of an ASV too when the
  model does not pack, :mod:`aam_ds.model.packing`): comparable with
  ``torch.utils.flop_counter.FlopCounterMode`` (tests/test_flops.py).

References: Kaplan et al. 2020, "Scaling laws for neural language models", section 2.1;
Chowdhery et al. 2022, "PaLM", appendix B (model FLOPs utilisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from aam_ds.model.packing import distinct_rows
from aam_ds.model.vocabulary import PAD, VOCAB_SIZE

TRAINING_MULTIPLIER = 3  # forward + backward (gradients of inputs and of weights) = 3 forward passes


@dataclass(frozen=True)
class BatchFlops:
    """FLOPs of one batch: ``model`` (no padding) and ``executed`` (the padded layout)."""

    model: float
    executed: float

    def __add__(self, other: BatchFlops) -> BatchFlops:
        return BatchFlops(self.model + other.model, self.executed + other.executed)


def encoder_flops(d_model: int, ffn_dim: int, n_layers: int, lengths: torch.Tensor, pools: int = 1) -> float:
    """Forward FLOPs of ``n_layers`` transformer blocks and ``pools`` attention pools over sequences
    of ``lengths`` (int ``[N]``, elements attended per sequence): per element and layer ``8 d^2``
    (QKV and output projections) ``+ 4 d f`` (feed-forward) ``+ 4 S d`` (attention over the ``S``
    elements of its sequence); per element and pool ``4 d`` (score and weighted sum)."""
    lengths = lengths.double()
    tokens, squares = float(lengths.sum()), float((lengths * lengths).sum())
    per_layer = (8 * d_model * d_model + 4 * d_model * ffn_dim) * tokens + 4 * d_model * squares
    return n_layers * per_layer + pools * 4 * d_model * tokens


def forward_flops(model: torch.nn.Module, tokens: torch.Tensor, counts: torch.Tensor, want: Iterable[str]) -> BatchFlops:
    """Forward FLOPs of ``model(tokens, counts, want)`` for one batch.

    Parameters
    ----------
    model : AAMModel (or a DeepSpeed engine around one)
    tokens : int ``[B, A, L]`` nucleotide tokens, PAD for padding.
    counts : float ``[B, A]`` read counts; an ASV is present where ``counts > 0``.
    want : the outputs asked for (``aam_ds.model.aam.OUTPUTS``); ``nucleotide_logits`` as the
        objective asks for them: of one masked copy of each distinct present ASV
        (``nucleotide_tokens = nucleotide_rows(tokens, counts)``, :mod:`aam_ds.model.packing`).

    Returns
    -------
    BatchFlops of one forward pass (FLOPs, float).
    """
    model = getattr(model, "module", model)
    spec, want = model.config, set(want)
    d, f = spec.d_model, spec.ffn_mult * spec.d_model
    b, a, seq_len = tokens.shape
    present = counts > 0
    present_tokens = tokens.reshape(b * a, seq_len)[present.reshape(-1)]
    distinct = distinct_rows(present_tokens)[0]
    packs = model.pack_asvs and not (model.training and spec.dropout > 0)  # as AAMModel._encode_asvs decides
    asv_lengths = (distinct != PAD).sum(dim=1)
    n_encoded = len(distinct) if packs else len(present_tokens)
    model_flops = encoder_flops(d, f, spec.asv_layers, asv_lengths)
    executed = encoder_flops(d, f, spec.asv_layers, torch.full((n_encoded,), seq_len))
    if spec.freeze_sequence_encoder and "nucleotide_logits" not in want:  # memoised: each ASV encoded once per run, not per step
        model_flops = executed = 0.0
    if "nucleotide_logits" in want:  # one masked copy of each distinct ASV, encoded and read by the head (Objective.forward)
        model_flops += encoder_flops(d, f, spec.asv_layers, asv_lengths) + 2 * d * VOCAB_SIZE * float(asv_lengths.sum())
        executed += (
            encoder_flops(d, f, spec.asv_layers, torch.full((len(distinct),), seq_len)) + 2 * d * VOCAB_SIZE * len(distinct) * seq_len
        )
    if want & {"sample_embedding", "abundance", "task"}:
        model_flops += _sample_flops(model, present.sum(dim=1), want)
        executed += _sample_flops(model, torch.full((b,), a), want)
    return BatchFlops(model_flops, executed)


def _sample_flops(model: torch.nn.Module, asvs_per_sample: torch.Tensor, want: set[str]) -> float:
    """Forward FLOPs of the sample encoder and its heads over samples of ``asvs_per_sample`` ASV slots."""
    spec = model.config
    d, slots, samples = spec.d_model, float(asvs_per_sample.sum()), len(asvs_per_sample)
    pooled = bool(want & {"sample_embedding", "task"})  # two pools (plain, abundance-weighted) and the projection
    total = encoder_flops(d, spec.ffn_mult * d, spec.sample_layers, asvs_per_sample, pools=2 * pooled) + pooled * 2 * d * d * samples
    if model.abundance_embedding is not None:
        total += (2 * d + 2 * d * d) * slots  # Linear(1, d), Linear(d, d)
    if "abundance" in want:
        total += 2 * d * slots
    if "task" in want and model.task_head is not None:
        total += samples * sum(
            2 * layer.in_features * layer.out_features for layer in model.task_head.mlp if isinstance(layer, torch.nn.Linear)
        )
    return total


def training_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], want: Iterable[str]) -> BatchFlops:
    """FLOPs of a training micro-step on ``batch`` (forward and backward: 3 forward passes)."""
    one = forward_flops(model, batch["tokens"], batch["counts"], want)
    return BatchFlops(TRAINING_MULTIPLIER * one.model, TRAINING_MULTIPLIER * one.executed)


class FlopTally:
    """Sums the training FLOPs of the micro-batches that pass through :meth:`count`."""

    def __init__(self, model: torch.nn.Module, want: Iterable[str]):
        self.model, self.want = model, frozenset(want)
        self.total = BatchFlops(0.0, 0.0)

    def count(self, batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """``batches`` unchanged, each counted as it is taken."""
        for batch in batches:
            self.total = self.total + training_flops(self.model, batch, self.want)
            yield batch

    def take(self) -> BatchFlops:
        """The FLOPs counted since the last call (and reset)."""
        total, self.total = self.total, BatchFlops(0.0, 0.0)
        return total
