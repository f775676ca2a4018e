"""Per-ASV feature importance of a fine-tuned model, by four methods.

Every method returns one score per ASV of :class:`ExplainData` (larger = more important):

- ``integrated_gradients`` (Sundararajan et al. 2017, computed by Captum): attributions with
  respect to the vectors the sample encoder reads for each ASV of a sample (its sequence vector,
  learned identity vector and abundance embedding), from the baseline of all-zero vectors with the
  sample's set of ASVs kept. This is the model's own input layer for an ASV: the counts themselves
  enter through a presence mask and a log relative abundance, neither of which can be interpolated
  from "absent" (log 0), so integrating along the counts is not defined. Summed over the vector's
  dimensions, a sample's attributions add up to its prediction minus the prediction from the
  baseline (completeness). Regression attributions are in the target's original units;
  classification ones in logits of the true class (or the predicted class without labels). The
  ASV's score is the mean absolute attribution over the explained samples (0 where absent), the
  global-importance convention of mean ``|SHAP|`` (Lundberg & Lee 2017).
- ``attention``: the mean over samples (0 where absent) of the attention-pooling weight that the
  ASV's state gets in the sample embedding (:mod:`aam_ds.explain.attention`).
- ``permutation`` (Breiman 2001; Fisher et al. 2019): the increase of the metric (MAE in original
  units; log loss for classification) when the ASV's counts are permuted across the explained
  samples, over ``repeats`` permutations, with a 95 % t-interval over the repeats. Only samples
  whose count of the ASV changes are predicted again.
- ``removal``: the increase of the metric when the ASV is removed from every sample.

Permutation and removal need the true values (``--metadata``, ``--target``); they are as
"held-out" as the samples given, so explain samples the model was not trained on (``--samples``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats

from aam_ds.errors import AamInputError
from aam_ds.explain.forward import SampleForward

METHODS = ("integrated_gradients", "attention", "permutation", "removal")
Progress = Callable[[int], None] | None


@dataclass
class Target:
    """What is explained: the regression output ``index`` (or the class logits when ``classes``),
    with the true values of the explained samples (``float64 [N]`` or class codes ``int64 [N]``)."""

    name: str
    index: int
    classes: tuple[str, ...] | None = None
    values: np.ndarray | None = None

    def metric(self, predicted: np.ndarray) -> float:
        """MAE (regression, original units) or log loss (classification) of ``predicted`` ``[N, T|C]``."""
        if self.classes:
            p = predicted[np.arange(len(self.values)), self.values]
            return float(-np.log(np.clip(p, 1e-12, None)).mean())
        return float(np.abs(predicted[:, self.index] - self.values).mean())


@dataclass
class Score:
    """One method's per-ASV scores ``float64 [K]``; for permutation the 95 % interval bounds too."""

    values: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def integrated_gradients(
    forward: SampleForward, target: Target, steps: int = 32, on_samples: Progress = None, baseline: str = "mean"
) -> np.ndarray:
    """Attributions ``float64 [N, K]`` of every (sample, ASV) pair (0 where the ASV is absent); see the module docstring."""
    from captum.attr import IntegratedGradients

    data, model = forward.data, forward.model
    reference = mean_asv_input(forward) if baseline == "mean" else None
    scale = 1.0 if target.classes else float(model.target_normalizer.std[target.index])

    def output(x: torch.Tensor, counts: torch.Tensor, *covariates: torch.Tensor) -> torch.Tensor:
        task = model.sample_outputs(x, counts, {"task"}, covariates[0] if covariates else None)["task"]
        return task if target.classes else task * scale

    method = IntegratedGradients(output)
    attributions = np.zeros(data.counts.shape)
    for start in range(0, len(data.counts), forward.batch_size):
        rows = np.arange(start, min(start + forward.batch_size, len(data.counts)))
        batch = forward.batch(data.counts, rows)
        x = forward.asv_inputs(batch).detach()
        extra = (batch.counts,) + ((batch.covariates,) if batch.covariates is not None else ())
        with torch.enable_grad():
            base = torch.zeros_like(x) if reference is None else reference.expand_as(x) * (batch.slots >= 0)[..., None]
            attr = method.attribute(
                x,
                baselines=base,
                target=_ig_target(forward, target, batch, x, rows),
                additional_forward_args=extra,
                n_steps=steps,
                internal_batch_size=forward.batch_size * 4,
            )
        per_slot = attr.sum(-1).detach().double().cpu().numpy()
        slots = batch.slots.cpu().numpy()
        b, a = np.nonzero(slots >= 0)
        attributions[rows[b], slots[b, a]] = per_slot[b, a]
        if on_samples is not None:
            on_samples(len(rows))
    return attributions


@torch.no_grad()
def mean_asv_input(forward: SampleForward) -> torch.Tensor:
    """The mean ``[D]`` of the sample encoder's input vectors over every present ASV of every explained sample."""
    total, n = 0.0, 0
    for start in range(0, len(forward.data.counts), forward.batch_size):
        batch = forward.batch(forward.data.counts, np.arange(start, min(start + forward.batch_size, len(forward.data.counts))))
        present = batch.slots >= 0
        total = total + forward.asv_inputs(batch)[present].sum(dim=0)
        n += int(present.sum())
    return total / max(n, 1)


def _ig_target(forward: SampleForward, target: Target, batch, x: torch.Tensor, rows: np.ndarray):
    """Captum's ``target``: the regression output index, or per sample the true (else predicted) class."""
    if not target.classes:
        return target.index
    if target.values is not None:
        return torch.from_numpy(target.values[rows]).to(x.device)
    with torch.no_grad():
        return forward.task(x, batch).argmax(dim=-1)


def mean_absolute(attributions: np.ndarray) -> Score:
    """Per-ASV score: mean ``|attribution|`` over samples (absent ASVs count as 0)."""
    return Score(np.abs(attributions).mean(axis=0))


def permutation_importance(forward: SampleForward, target: Target, repeats: int = 5, seed: int = 0, on_asv: Progress = None) -> Score:
    """Metric increase when each ASV's counts are permuted across samples, mean and 95 % t-interval over ``repeats``."""
    if repeats < 1:
        raise AamInputError("--repeats", f"must be at least 1, got {repeats}", "give a positive number of permutations")
    counts, base_predictions, base = _baseline(forward, target, "permutation")
    rng = np.random.default_rng(seed)
    scenarios = [(j, counts[rng.permutation(len(counts)), j]) for j in range(counts.shape[1]) for _ in range(repeats)]
    deltas = _scenario_metrics(forward, target, counts, base_predictions, scenarios, on_asv, repeats).reshape(-1, repeats) - base
    mean = deltas.mean(axis=1)
    if repeats == 1:
        return Score(mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan))
    half = stats.t.ppf(0.975, repeats - 1) * deltas.std(axis=1, ddof=1) / np.sqrt(repeats)
    return Score(mean, mean - half, mean + half)


def removal_importance(forward: SampleForward, target: Target, on_asv: Progress = None) -> Score:
    """Metric increase when each ASV is removed from every sample."""
    counts, base_predictions, base = _baseline(forward, target, "removal")
    scenarios = [(j, np.zeros(len(counts), counts.dtype)) for j in range(counts.shape[1])]
    return Score(_scenario_metrics(forward, target, counts, base_predictions, scenarios, on_asv, 1) - base)


def require_values(target: Target, method: str) -> None:
    """Refuse (AamInputError) a metric-based method without the true values of the explained samples."""
    if target.values is None:
        raise AamInputError(
            f"--method {method}",
            "needs the true values of the explained samples",
            f"add --metadata FILE --target {target.name}, or choose --method integrated_gradients attention",
        )


def _baseline(forward: SampleForward, target: Target, method: str) -> tuple[np.ndarray, np.ndarray, float]:
    require_values(target, method)
    predictions = forward.predict()
    return forward.data.counts, predictions, target.metric(predictions)


def _scenario_metrics(
    forward: SampleForward,
    target: Target,
    counts: np.ndarray,
    base_predictions: np.ndarray,
    scenarios: list[tuple[int, np.ndarray]],
    on_asv: Progress,
    per_asv: int,
) -> np.ndarray:
    """The metric ``[S]`` of each scenario ``(column, values)``: ``counts`` with that column replaced.
    Only samples whose count changes are predicted again, those of several scenarios in one pass."""
    metrics = np.zeros(len(scenarios))
    group = max(per_asv, (4 * forward.batch_size // max(per_asv, 1)) * per_asv)  # whole ASVs per pass
    for start in range(0, len(scenarios), group):
        chunk = scenarios[start : start + group]
        changed = [np.flatnonzero(values != counts[:, column]) for column, values in chunk]
        stacked = np.concatenate([counts[rows] for rows in changed]) if chunk else counts[:0]
        offset = 0
        for (column, values), rows in zip(chunk, changed):
            stacked[offset : offset + len(rows), column] = values[rows]
            offset += len(rows)
        predicted = forward.predict(stacked, np.concatenate(changed)) if len(stacked) else base_predictions[:0]
        offset = 0
        for i, rows in enumerate(changed):
            predictions = base_predictions.copy()
            predictions[rows] = predicted[offset : offset + len(rows)]
            offset += len(rows)
            metrics[start + i] = target.metric(predictions)
        if on_asv is not None:
            on_asv(len(chunk) // per_asv)
    return metrics
