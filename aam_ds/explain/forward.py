"""The model's sample encoder run on a dense sample x ASV count matrix: what every explanation perturbs.

In evaluation mode an ASV's vector (nucleotide encoder, standardised, plus its learned identity
vector) does not depend on the sample it is in, so :class:`SampleForward` encodes each distinct ASV
once and then runs only the sample encoder (:meth:`AAMModel.sample_inputs` /
:meth:`AAMModel.sample_outputs`) on any count matrix: the original samples, samples with one
ASV's abundances permuted or removed, or (for integrated gradients, :meth:`SampleForward.soft_task`)
every ASV at an interpolated abundance and presence. Its predictions equal ``aam-ds predict``'s for the same samples (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from aam_ds.errors import AamInputError
from aam_ds.model.aam import AAMModel
from aam_ds.prediction import ModelInputs


@dataclass
class ExplainData:
    """The samples to explain, as the model reads them.

    - ``counts``: ``float32 [N, K]`` reads of each sample's selected ASVs (``aam-ds predict``'s
      preprocessing: rarefaction, per-sample ``max_asvs``), 0 elsewhere
    - ``asv_ids`` ``[K]`` and ``tokens`` ``uint8 [K, L]``: the ASVs selected in at least one sample
    - ``covariates``: ``int64 [N, C]`` or None
    """

    sample_ids: list[str]
    asv_ids: list[str]
    tokens: np.ndarray
    counts: np.ndarray
    covariates: np.ndarray | None


def explain_data(inputs: ModelInputs, sample_ids: Sequence[str] | None = None, source: str = "--samples") -> ExplainData:
    """:class:`ExplainData` of ``inputs`` (all samples, or those named in ``sample_ids``, in that order)."""
    by_id = {s: i for i, s in enumerate(inputs.sample_ids)}
    if sample_ids is not None:
        missing = [s for s in sample_ids if s not in by_id]
        if missing:
            raise AamInputError(
                source,
                f"{len(missing)} sample IDs are not in the table (after preprocessing), e.g. {missing[:5]}",
                "list IDs spelled as in the table, one per line",
            )
    order = [by_id[s] for s in sample_ids] if sample_ids is not None else list(range(len(inputs.sample_ids)))
    if not order:
        raise AamInputError(source, "no samples to explain", "give at least one sample")
    rows = [inputs.rows[i] for i in order]
    used = np.unique(np.concatenate([r.asv_index for r in rows]))
    column = {int(j): k for k, j in enumerate(used)}
    counts = np.zeros((len(rows), len(used)), dtype=np.float32)
    for i, row in enumerate(rows):
        counts[i, [column[int(j)] for j in row.asv_index]] = row.counts
    covariates = None if inputs.covariates is None else inputs.covariates[[r.sample_index for r in rows]]
    asv_ids = inputs.asv_ids or [str(j) for j in range(len(inputs.tokens))]
    return ExplainData([inputs.sample_ids[i] for i in order], [asv_ids[j] for j in used], inputs.tokens[used], counts, covariates)


@dataclass
class Batch:
    """Samples in the sample encoder's layout: ``slots`` ``int64 [B, A]`` (the column of ``counts``
    in each ASV slot, -1 on padding), ``counts`` ``float32 [B, A]``, ``covariates`` ``[B, C]`` or None."""

    slots: torch.Tensor
    counts: torch.Tensor
    covariates: torch.Tensor | None


class SampleForward:
    """The sample encoder of ``model`` over the ASVs of ``data`` (each ASV encoded once, on ``device``)."""

    def __init__(self, model: AAMModel, data: ExplainData, device: str | torch.device = "cpu", batch_size: int = 32):
        if batch_size < 1:
            raise AamInputError("--batch-size", f"must be at least 1, got {batch_size}", "give a positive batch size")
        self.model = model.to(device).eval()
        self.data = data
        self.device = torch.device(device)
        self.batch_size = batch_size
        tokens = torch.from_numpy(np.ascontiguousarray(data.tokens)).to(self.device, torch.int64)
        with torch.no_grad():
            vectors = model.asv_vectors(tokens)["combined"].float()
        self.vectors = torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])  # row K: padding

    def batch(self, counts: np.ndarray, rows: np.ndarray, samples: np.ndarray | None = None) -> Batch:
        """The samples ``rows`` of ``counts [N, K]`` as a :class:`Batch` (ASV slots in column order);
        ``samples``: the data's sample of each row, for its covariates (default ``rows``)."""
        block = counts[rows]
        present = block > 0
        width = max(int(present.sum(axis=1).max()), 1)
        slots = np.full((len(rows), width), -1, dtype=np.int64)
        values = np.zeros((len(rows), width), dtype=np.float32)
        for b in range(len(rows)):
            columns = np.flatnonzero(present[b])
            slots[b, : len(columns)] = columns
            values[b, : len(columns)] = block[b, columns]
        samples = rows if samples is None else samples
        covariates = None if self.data.covariates is None else torch.from_numpy(self.data.covariates[samples]).to(self.device)
        return Batch(torch.from_numpy(slots).to(self.device), torch.from_numpy(values).to(self.device), covariates)

    def asv_inputs(self, batch: Batch) -> torch.Tensor:
        """What the sample encoder reads for ``batch``: ``float32 [B, A, D]``."""
        return self.model.sample_inputs(self.vectors[batch.slots], batch.counts)

    def task(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Task head output ``[B, T]`` (normalised units) or logits ``[B, n_classes]`` from inputs ``x``."""
        return self.model.sample_outputs(x, batch.counts, {"task"}, batch.covariates)["task"]

    def soft_task(
        self,
        log_abundance: torch.Tensor,
        presence: torch.Tensor,
        covariates: torch.Tensor | None = None,
        columns: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Task output ``[B, T]`` (normalised units) or logits ``[B, n_classes]`` of samples given over
        the data's ASVs ``columns`` (default all K): each one's log relative abundance ``float32 [B, C]``
        and presence ``float32 [B, C]`` in [0, 1] (a soft membership, :meth:`AAMModel.sample_outputs`).
        Differentiable in both; with presence 1 / 0 and the shares of a sample it equals :meth:`task`
        of that sample. ``covariates``: ``[B, C]`` or None."""
        vectors = self.vectors[: len(self.data.asv_ids)] if columns is None else self.vectors[torch.as_tensor(columns, device=self.device)]
        counts = log_abundance.exp()  # the same shares up to a factor per sample, which the pools' softmax ignores
        x = self.model.sample_inputs(vectors.expand(len(counts), -1, -1), counts, log_abundance)
        return self.model.sample_outputs(x, counts, {"task"}, covariates, presence)["task"]

    @torch.no_grad()
    def predict(self, counts: np.ndarray | None = None, samples: np.ndarray | None = None) -> np.ndarray:
        """Predictions ``float64 [n, T]`` in original units, or class probabilities ``[n, C]``, of the
        rows of ``counts`` (default the data's), which belong to the data's ``samples`` (default
        ``0..n-1``; their covariates are used)."""
        counts = self.data.counts if counts is None else counts
        rows = np.arange(len(counts))
        samples = rows if samples is None else np.asarray(samples)
        out = []
        for start in range(0, len(rows), self.batch_size):
            part = slice(start, start + self.batch_size)
            batch = self.batch(counts, rows[part], samples[part])
            out.append(self.to_output_units(self.task(self.asv_inputs(batch), batch)).double().cpu().numpy())
        width = self.model.task_head.mlp[-1].out_features
        return np.concatenate(out) if out else np.zeros((0, width))

    def to_output_units(self, task: torch.Tensor) -> torch.Tensor:
        """Task outputs in prediction units: regression de-normalised, classification as softmax probabilities."""
        normalizer = self.model.target_normalizer
        return normalizer.inverse(task.float()) if normalizer is not None else task.float().softmax(dim=-1)
