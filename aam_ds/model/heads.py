"""Output heads: nucleotide logits, per-ASV abundance, regression / classification task."""

from __future__ import annotations

import torch
from torch import nn

from aam_ds.model.vocabulary import VOCAB_SIZE


def log_relative_abundance(counts: torch.Tensor) -> torch.Tensor:
    """counts ``[B, A]`` -> natural log of each ASV's share of its sample's reads ``[B, A]``; 0 where count is 0."""
    counts = counts.float()
    present = counts > 0
    total = counts.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(present, torch.log(torch.where(present, counts, 1.0) / total), 0.0)


class NucleotideHead(nn.Module):
    """Token states ``[..., D]`` -> logits over the vocabulary ``[..., VOCAB_SIZE]``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, VOCAB_SIZE)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Token states ``[..., L, D]`` -> nucleotide logits ``[..., L, VOCAB_SIZE]``."""
        return self.proj(states)


class AbundanceHead(nn.Module):
    """Per-ASV states of the sample encoder ``[B, A, D]`` -> predicted log relative abundance ``[B, A]``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """ASV states ``[B, A, D]`` -> predicted log relative abundance ``[B, A]``."""
        return self.proj(states).squeeze(-1)


class TaskHead(nn.Module):
    """Sample embedding ``[B, D]`` (+ categorical covariates ``[B, C]``) -> ``[B, n_out]``.

    Each covariate has its own embedding table; their vectors are concatenated with the sample
    embedding and passed through a two-layer MLP. ``n_out`` is the number of regression targets or
    the number of classes (logits).
    """

    def __init__(self, d_model: int, n_out: int, covariate_cardinalities: tuple[int, ...] = ()):
        super().__init__()
        self.covariate_cardinalities = tuple(int(c) for c in covariate_cardinalities)
        if any(c < 1 for c in self.covariate_cardinalities):
            raise ValueError(f"TaskHead: covariate cardinalities {self.covariate_cardinalities} include an empty category set")
        cov_dim = min(16, d_model)
        self.covariate_embeddings = nn.ModuleList(nn.Embedding(c, cov_dim) for c in self.covariate_cardinalities)
        fused = d_model + cov_dim * len(self.covariate_cardinalities)
        self.mlp = nn.Sequential(nn.Linear(fused, d_model), nn.GELU(), nn.Linear(d_model, n_out))

    def check_covariates(self, covariates: torch.Tensor | None, batch_size: int) -> None:
        """Raise ValueError unless ``covariates`` is ``int64 [batch_size, C]`` for a head with C covariates."""
        n_cov = len(self.covariate_cardinalities)
        if n_cov == 0:
            return
        if covariates is None or tuple(covariates.shape) != (batch_size, n_cov):
            got = None if covariates is None else tuple(covariates.shape)
            raise ValueError(f"TaskHead: expected covariates int64 [{batch_size}, {n_cov}] category codes, got {got}")

    def forward(self, embedding: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Sample embedding ``[B, D]`` (+ covariate codes ``[B, C]``) -> ``[B, n_out]``."""
        parts = [embedding]
        for column, table in enumerate(self.covariate_embeddings):
            parts.append(table(covariates[:, column]))
        return self.mlp(torch.cat(parts, dim=-1))
