"""Evaluation on a held-out split, sharded over ranks.

Every rank takes a contiguous share of ``ceil(len / W)`` positions of the split; the last ranks'
shares are filled up with repeats of the first sample, marked invalid, so every rank runs the same
number of forward passes (ZeRO-3 requires it) and every sample is evaluated exactly once. Losses
are averaged over valid samples of all ranks; embeddings, predictions, sample indices and the
validity flags are gathered and the repeats dropped, so the pairwise metrics cover every pair of
samples of the split, across ranks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from aam_ds.data.dataset import collate, to_device
from aam_ds.engine.distributed import DistContext, all_reduce_mean
from aam_ds.engine.objective import Objective, _unwrap
from aam_ds.engine.pairwise import gather_no_grad
from aam_ds.evaluation.metrics import classification_metrics, pearson_r, regression_metrics
from aam_ds.model import losses

EVAL_MASK_SEED = 12345


@torch.no_grad()
def evaluate(
    model: Any, dataset: Any, objective: Objective, ctx: DistContext, micro_batch: int
) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """Metrics over ``dataset`` (same dict on every rank) and, when the pairwise loss is on, the
    (predicted, true) distances of all evaluated pairs i<j (``float [P]`` each)."""
    if len(dataset) < (2 if "sample_embedding" in objective.want else 1):
        return {}, None
    share = math.ceil(len(dataset) / ctx.world_size)
    mine = list(range(ctx.rank * share, min((ctx.rank + 1) * share, len(dataset))))
    positions, valid_all = mine + [0] * (share - len(mine)), torch.arange(share) < len(mine)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    embeddings, indices, flags, task_out, task_true = [], [], [], [], []
    for start in range(0, share, micro_batch):
        batch = to_device(collate([dataset[i] for i in positions[start : start + micro_batch]]), ctx.device)
        valid = valid_all[start : start + micro_batch].to(ctx.device)
        out, labels = objective.forward(model, batch, torch.Generator().manual_seed(EVAL_MASK_SEED + start), valid)
        add_batch_sums(sums, objective, out, labels, batch, valid)
        flags.append(valid)
        if "sample_embedding" in out:
            embeddings.append(out["sample_embedding"].float())
            indices.append(batch["sample_index"])
        if "task" in out:
            task_out.append(out["task"].float())
            task_true.append(batch["targets"])
    totals = all_reduce_mean(sums, ctx.device)  # means over ranks of sums: their ratio is the mean over samples
    metrics = {name: value / totals["samples"] for name, value in totals.items() if name != "samples"}
    scatter = None
    keep = gather_no_grad(torch.cat(flags)) if flags else None
    if embeddings:
        emb, idx = gather_no_grad(torch.cat(embeddings))[keep], gather_no_grad(torch.cat(indices))[keep]
        pairwise, scatter = pairwise_metrics(emb, objective.distance_target.batch(idx))
        metrics.update(pairwise)
        metrics.update(asv_similarity(_unwrap(model), dataset))
    if task_out:
        metrics.update(
            task_metrics(model, objective, gather_no_grad(torch.cat(task_out))[keep], gather_no_grad(torch.cat(task_true))[keep])
        )
    metrics["loss"] = objective.weighted_total(metrics)
    model.train(was_training)
    return metrics, scatter


def add_batch_sums(
    sums: dict[str, float],
    objective: Objective,
    out: dict[str, torch.Tensor],
    labels: torch.Tensor | None,
    batch: dict[str, torch.Tensor],
    valid: torch.Tensor,
) -> None:
    """Add one micro-batch's sample count and, times that count, the objective's per-sample loss
    terms (:meth:`Objective.reconstruction_terms`) and the masked-nucleotide accuracy to ``sums``;
    ``valid`` (``bool [B]``) marks the rows that are not padding repeats (``out`` and ``labels`` come
    from :meth:`Objective.forward` with it, so their nucleotide rows are the valid samples' ASVs)."""
    n = int(valid.sum())
    sums["samples"] = sums.get("samples", 0.0) + n
    if not n:
        return
    kept = {"abundance": out["abundance"][valid]} if "abundance" in out else {}
    if "nucleotide_logits" in out:  # the ASVs of the valid samples (Objective.forward)
        kept["nucleotide_logits"] = out["nucleotide_logits"]
    for name, value in objective.reconstruction_terms(kept, {"counts": batch["counts"][valid]}, labels).items():
        sums[name] = sums.get(name, 0.0) + n * value.item()
        if name == "nucleotide":
            accuracy = losses.masked_nucleotide_accuracy(kept["nucleotide_logits"], labels).nan_to_num(0.0).item()
            sums["nucleotide_accuracy"] = sums.get("nucleotide_accuracy", 0.0) + n * accuracy


def pairwise_metrics(emb: torch.Tensor, target: torch.Tensor) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
    """The pairwise loss and the Pearson r of embedding vs target distances over all pairs i<j of the
    evaluated samples (``emb`` ``[N, D]``, ``target`` ``[N, N]``), and those (predicted, true)
    distances (``float [N(N-1)/2]`` each) for the scatter plot."""
    i, j = torch.triu_indices(len(emb), len(emb), offset=1, device=emb.device)
    predicted = losses.embedding_distances(emb)[i, j].cpu().numpy()
    true = target[i, j].float().cpu().numpy()
    metrics = {"pairwise": losses.pairwise_distance_loss(emb, target).item(), "distance_r": pearson_r(true, predicted)}
    return metrics, (predicted, true)


def task_metrics(model: Any, objective: Objective, predicted: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Task loss plus accuracy, balanced accuracy and AUC (classification; binary: of the second
    class, more: macro one-vs-rest) or MAE and R^2 in the targets' own units, each the mean over
    targets (regression); both scored by :mod:`aam_ds.evaluation.metrics`, as ``aam-ds evaluate`` does."""
    metrics = {"task": objective.task_loss(model, predicted, targets).item()}
    if objective.loss.task == "classification":
        probabilities = predicted.float().softmax(-1).cpu().numpy()
        class_names = [str(c) for c in range(probabilities.shape[1])]
        scored = classification_metrics(targets.reshape(-1).cpu().numpy().astype(str), probabilities, class_names)
        metrics.update({name: scored[name] for name in ("accuracy", "balanced_accuracy", "auc")})
        return metrics
    original = _unwrap(model).target_normalizer.inverse(predicted).float().cpu().numpy()
    targets = targets.float().reshape(original.shape).cpu().numpy()
    per_target = [regression_metrics(targets[:, k], original[:, k]) for k in range(original.shape[1])]
    metrics["mae"] = float(np.mean([m["mae"] for m in per_target]))
    metrics["r2"] = float(np.mean([m["r2"] for m in per_target]))
    return metrics


def asv_similarity(model: Any, dataset: Any, max_asvs: int = 256) -> dict[str, float]:
    """Mean pairwise cosine similarity of the ASV vectors of the first ``max_asvs`` distinct ASVs of
    ``dataset`` (any dataset of sample items): ``asv_cosine`` of the vectors the sample encoder reads
    (standardised sequence vectors + learned identity), ``asv_cosine_sequence`` of the standardised
    sequence vectors alone and ``asv_cosine_pooled`` of the nucleotide encoder's raw output (before
    :class:`aam_ds.model.aam.AsvStandardizer`).

    Near 1 means every ASV gets nearly the same vector (a collapsed path). Standardisation removes
    the common component, so ``asv_cosine_sequence`` is low by construction once its running
    statistics are set; ``asv_cosine_pooled`` shows how much of each raw vector is shared. Every
    rank computes it on the same ASVs (ZeRO-3 needs every rank in the forward).
    """
    distinct: dict[bytes, torch.Tensor] = {}
    for i in range(len(dataset)):
        for tokens in dataset[i]["tokens"]:
            distinct.setdefault(tokens.numpy().tobytes(), tokens)
        if len(distinct) >= max_asvs:
            break
    if len(distinct) < 2:
        return {}
    device = next(model.parameters()).device
    vectors = model.asv_vectors(torch.stack(list(distinct.values())[:max_asvs]).long().to(device))
    return {
        "asv_cosine": mean_pairwise_cosine(vectors["combined"]),
        "asv_cosine_sequence": mean_pairwise_cosine(vectors["sequence"]),
        "asv_cosine_pooled": mean_pairwise_cosine(vectors["pooled"]),
    }


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine similarity over pairs i<j of the rows of ``vectors [K, D]`` (K >= 2)."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    i, j = torch.triu_indices(len(unit), len(unit), offset=1, device=unit.device)
    return float((unit @ unit.T)[i, j].mean())
