"""Per-ASV feature importance of a fine-tuned model, by four methods.

Every method returns one score per ASV of :class:`ExplainData` (larger = more important):

- ``integrated_gradients`` (Sundararajan et al. 2017, computed by Captum): attributions to each
  ASV's two inputs, its log relative abundance and its presence in the sample (a soft membership,
  :meth:`AAMModel.sample_outputs`), integrated from the *expected sample*: every explained ASV at
  its mean log relative abundance where present, with presence equal to its prevalence among the
  explained samples (the ``baseline_asvs`` most prevalent ones; rarer ASVs are absent from it and
  enter only the samples that hold them). An absent ASV moves from its prevalence to 0 and so
  gets an attribution too: a model that reads "this age-responding taxon is missing" credits it.
  A sample's attributions
  add up to its prediction minus the expected sample's (completeness, tested); regression ones are
  in the target's original units, classification ones in logits of the true class (the predicted
  one without labels). For regression the ASV's score is its share of the variance of those
  outputs over the explained samples, ``|Cov(a_j, f)| / Var(f)`` with ``f = sum_j a_j``: by
  completeness the signed shares add up to 1, and an attribution that varies between samples
  without moving the prediction scores 0. For classification, where each sample's explained
  logit is that of its own class, and with one sample or a constant output, it is the mean
  ``|a_j|`` (the mean ``|SHAP|`` convention of Lundberg & Lee 2017).
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
from aam_ds.model.heads import log_relative_abundance

METHODS = ("integrated_gradients", "attention", "permutation", "removal")
BASELINE_ASVS = 512  # ASVs of the expected sample (the most prevalent): its attention cost grows with their number squared
SLOTS_PER_SAMPLE = 128  # integrated gradients' passes hold the attention of 4 x batch size samples of this many ASVs
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
    forward: SampleForward, target: Target, steps: int = 32, on_samples: Progress = None, baseline_asvs: int = BASELINE_ASVS
) -> np.ndarray:
    """Attributions ``float64 [N, K]`` of every (sample, ASV) pair, absent ASVs included (those of the
    expected sample's ``baseline_asvs`` most prevalent ASVs); see the module docstring.

    Raises:
        AamInputError: for a model that reads ASVs in order (``model.asv_order``), whose inputs have
            no one slot per ASV to attribute to, or ``baseline_asvs`` < 1.
    """
    from captum.attr import IntegratedGradients

    data, model = forward.data, forward.model
    if model.config.asv_order:
        raise AamInputError(
            "--method integrated_gradients",
            "this model reads ASVs in order (model.asv_order), so an ASV has no one input slot to attribute to",
            "choose --method attention permutation removal",
        )
    reference = expected_sample(forward, baseline_asvs)
    scale = 1.0 if target.classes else float(model.target_normalizer.std[target.index])
    present = data.counts > 0
    in_reference = reference.presence.cpu().numpy() > 0
    width = int(in_reference.sum() + (present & ~in_reference).sum(axis=1).max())  # ASV slots of a sample's inputs, at most
    per_pass = max(1, 4 * forward.batch_size * SLOTS_PER_SAMPLE**2 // width**2)  # the attention memory of 4 batches of such samples
    size = min(forward.batch_size, per_pass)
    attributions = np.zeros(data.counts.shape)
    for start in range(0, len(data.counts), size):
        rows = np.arange(start, min(start + size, len(data.counts)))
        columns = np.flatnonzero(in_reference | present[rows].any(axis=0))

        def output(log_abundance: torch.Tensor, presence: torch.Tensor, *covariates: torch.Tensor) -> torch.Tensor:
            task = forward.soft_task(log_abundance, presence, covariates[0] if covariates else None, columns)
            return task if target.classes else task * scale

        log_abundance, presence = sample_point(forward, rows, reference, columns)
        covariates = None if data.covariates is None else torch.from_numpy(data.covariates[rows]).to(forward.device)
        with torch.enable_grad():
            attr = IntegratedGradients(output).attribute(
                (log_abundance, presence),
                baselines=(reference.log_abundance[columns].expand_as(log_abundance), reference.presence[columns].expand_as(presence)),
                target=_ig_target(forward, target, rows),
                additional_forward_args=(covariates,) if covariates is not None else None,
                n_steps=steps,
                internal_batch_size=max(per_pass, len(rows)),
            )
        attributions[np.ix_(rows, columns)] = (attr[0] + attr[1]).detach().double().cpu().numpy()
        if on_samples is not None:
            on_samples(len(rows))
    return attributions


@dataclass
class ExpectedSample:
    """The baseline of integrated gradients over the K explained ASVs: each at its mean log relative
    abundance over the samples holding it (``log_abundance float32 [K]``), and present with a weight
    equal to its prevalence among the explained samples (``presence float32 [K]``) if it is one of the
    most prevalent ``baseline_asvs``, else absent (0)."""

    log_abundance: torch.Tensor
    presence: torch.Tensor


def expected_sample(forward: SampleForward, baseline_asvs: int = BASELINE_ASVS) -> ExpectedSample:
    """The :class:`ExpectedSample` of ``forward``'s data, on its device.

    Raises:
        AamInputError: ``baseline_asvs`` < 1.
    """
    if baseline_asvs < 1:
        raise AamInputError("--baseline-asvs", f"must be at least 1, got {baseline_asvs}", "give a positive number of ASVs")
    present = forward.data.counts > 0
    log_share = log_relative_abundance(torch.as_tensor(forward.data.counts)).double().numpy()  # 0 where absent
    mean = log_share.sum(axis=0) / present.sum(axis=0).clip(min=1)
    prevalence = present.mean(axis=0)
    kept = np.argsort(-prevalence, kind="stable")[:baseline_asvs]
    presence = np.zeros_like(prevalence)
    presence[kept] = prevalence[kept]
    as_tensor = lambda values: torch.as_tensor(values, dtype=torch.float32, device=forward.device)  # noqa: E731
    return ExpectedSample(as_tensor(mean), as_tensor(presence))


def sample_point(
    forward: SampleForward, rows: np.ndarray, reference: ExpectedSample, columns: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples ``rows`` as integrated gradients' inputs over the explained ASVs ``columns`` (default
    all K): log relative abundance ``float32 [B, C]`` (the reference's where absent) and presence
    ``float32 [B, C]`` (1 / 0). The model's output there equals its prediction of the sample, if
    ``columns`` hold its ASVs (absent ones weigh 0)."""
    columns = np.arange(len(forward.data.asv_ids)) if columns is None else columns
    counts = torch.as_tensor(forward.data.counts[rows], dtype=torch.float32, device=forward.device)
    present = counts[:, columns] > 0
    log_abundance = torch.where(present, log_relative_abundance(counts)[:, columns], reference.log_abundance[columns])
    return log_abundance, present.float()


def _ig_target(forward: SampleForward, target: Target, rows: np.ndarray):
    """Captum's ``target``: the regression output index, or per sample the true (else predicted) class."""
    if not target.classes:
        return target.index
    if target.values is not None:
        return torch.from_numpy(target.values[rows]).to(forward.device)
    return torch.from_numpy(forward.predict(forward.data.counts[rows], rows).argmax(axis=1)).to(forward.device)


def attribution_score(attributions: np.ndarray, target: Target) -> Score:
    """Per-ASV score ``float64 [K]`` of attributions ``[N, K]`` (see the module docstring): for
    regression ``|Cov(a_j, f)| / Var(f)`` over the samples, ``f`` the attributions' sum per sample;
    for classification, whose explained logit is each sample's own class, and with fewer than 2
    samples or a constant ``f``, the mean ``|a_j|``."""
    total = attributions.sum(axis=1)
    variance = total.var()
    if target.classes or len(total) < 2 or variance <= 1e-12 * max(float(np.abs(total).mean()) ** 2, 1e-30):
        return Score(np.abs(attributions).mean(axis=0))
    return Score(np.abs((attributions - attributions.mean(axis=0)).T @ (total - total.mean()) / len(total)) / variance)


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
