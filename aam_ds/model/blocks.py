"""Building blocks of :mod:`aam_ds.model.aam`, readable top to bottom:

1. ``SelfAttention`` / ``Block``: a pre-LayerNorm transformer block on
   ``F.scaled_dot_product_attention`` with a boolean key-padding mask.
2. ``AttentionPool``: masked-softmax pooling of a set of vectors into one.
3. ``Encoder``: embedded tokens -> blocks -> final LayerNorm (then pooled; used twice).
4. ``AsvStandardizer``: ASV vectors standardised across the ASVs of a batch.
5. ``asv_hash_buckets``: the universal hash that keys the learned per-ASV vectors.

``LayerNorm`` and ``embed_fp32`` compute in float32 in a bf16 model, where torch's CPU kernels sum
their parameter gradients in bf16.

Padding safety: a sequence whose keys are all padding attends to all of its (meaningless) keys
instead of to none, so softmax never sees an all ``-inf`` row; pooled vectors of such sequences are
zeroed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aam_ds.model.config import ModelConfig
from aam_ds.model.vocabulary import PAD

HASH_PRIME = 2_147_483_647  # 2**31 - 1: the ASV hash is sum(token_l * r_l) mod this prime
STANDARDIZER_MOMENTUM = 0.5  # weight of each new batch in AsvStandardizer's running statistics (see its docstring)


def attendable_keys(valid: torch.Tensor) -> torch.Tensor:
    """Key mask for attention ``[N, S]`` bool: the valid keys, or every key if none is valid."""
    return valid | ~valid.any(dim=-1, keepdim=True)


def weighted_keys(key_mask: torch.Tensor, log_weight: torch.Tensor | None) -> torch.Tensor:
    """The attention mask of keys ``key_mask [N, S]`` bool, each weighted by ``exp(log_weight [N, S])``
    (optional): the float mask ``log_weight`` (``-inf`` outside ``key_mask``), added to the scores, or
    ``key_mask`` itself without weights. A key of weight ``w`` counts as ``w`` copies of itself."""
    if log_weight is None:
        return key_mask
    return log_weight.float().masked_fill(~key_mask, float("-inf"))


def masked_scores(scores: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """Attention ``scores [N, H, S, S]`` under a boolean (True = may be attended) or additive float
    key mask ``[N, 1, 1, S]``, in place; ``softmax`` of the result gives the attention weights."""
    if attn_mask.dtype == torch.bool:
        return scores.masked_fill_(~attn_mask, float("-inf"))
    return scores.add_(attn_mask.to(scores.dtype))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with a boolean ``attn_mask`` (True = may be attended, at least
    one key per row) or an additive float one, written as two batched matrix products and a softmax: q, k, v ``[N, H, S, Dh]``
    -> ``[N, H, S, Dh]``. Used for bf16 on CPU, where torch's fused CPU kernel is slower than this in
    its backward pass (about 5x on [424, 4, 100, 32], docs/benchmarks.md "Engine: throughput") while
    bf16 matrix products run at several times the fp32 rate."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # scaling q, not the [N, H, S, S] scores: one such tensor less
    weights = masked_scores(scores, attn_mask).softmax(dim=-1)  # in place: the product's backward does not read it
    return F.dropout(weights, dropout_p) @ v


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 whatever the module dtype; returns the input's dtype.

    In a bf16 module (DeepSpeed's ``bf16``) torch's CPU LayerNorm sums the gain and bias gradients
    over all rows in bf16: over the ~40,000 nucleotide positions of a batch they came out 3x to 50x
    off the float32 gradient (relative error of the norm, tests/test_bf16_gradients.py), which
    left bf16 pretraining's masked-nucleotide loss 16 % above fp32's after 300 steps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., D]`` -> normalised ``[..., D]`` in ``x.dtype``."""
        if x.dtype == torch.float32:
            return super().forward(x)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def embed_fp32(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """``embedding(ids)`` looked up from float32 weights, so that the backward pass sums each row's
    gradient in float32 (then rounds it once to the weight's dtype): ``[...]`` -> ``float32 [..., D]``.
    A bf16 table sums in bf16 on CPU, and the 4 nucleotide rows each collect ~10,000 positions of a
    batch: their gradient came out 1.9x off the float32 one."""
    return F.embedding(ids, embedding.weight.float())


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``[N, S, D]`` with a boolean key mask (``F.scaled_dot_product_attention``)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)  # a key bias would get no gradient
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x ``[N, S, D]``, key_mask ``[N, S]`` bool (True = may be attended) or float (added to the
        scores, :func:`weighted_keys`) -> ``[N, S, D]``."""
        n, s, d = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attention = explicit_attention if x.device.type == "cpu" and x.dtype == torch.bfloat16 else F.scaled_dot_product_attention
        y = attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(n, s, d))

    def attention_weights(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """The weights ``float32 [N, H, S, S]`` (query, key) that :meth:`forward` applies, recomputed
        explicitly (``scaled_dot_product_attention`` does not return them), without dropout; keys
        outside ``key_mask`` get exactly 0. For :mod:`aam_ds.explain`."""
        n, s, d = x.shape
        q, k, _ = self.qkv(x).view(n, s, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        scores = (q.float() @ k.float().transpose(-1, -2)) * (d // self.n_heads) ** -0.5
        return masked_scores(scores, key_mask[:, None, None, :]).softmax(dim=-1)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention and a GELU feed-forward layer, each with a residual connection."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.ln_attn = LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln_ffn = LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model),
            nn.GELU(),
            nn.Linear(ffn_mult * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x ``[N, S, D]``, key_mask ``[N, S]`` bool -> ``[N, S, D]``."""
        x = x + self.attn(self.ln_attn(x), key_mask)
        return x + self.ffn(self.ln_ffn(x))


class AttentionPool(nn.Module):
    """Pool ``[N, S, D]`` into ``[N, D]`` with a learned score per element and a masked softmax.

    ``log_prior [N, S]`` (optional) is added to the scores, so the weights start proportional to
    ``exp(log_prior)`` (e.g. relative abundances) and the learned score reweights them.
    Invalid elements get weight exactly 0; a set with no valid element pools to the zero vector.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.score = nn.Linear(d_model, 1, bias=False)  # softmax ignores a shared shift

    def forward(self, x: torch.Tensor, valid: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[N, S, D]``, valid ``[N, S]`` bool (optional ``log_prior [N, S]``) -> pooled ``[N, D]``."""
        return torch.einsum("ns,nsd->nd", self.weights(x, valid, log_prior).to(x.dtype), x)

    def weights(self, x: torch.Tensor, valid: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
        """Pooling weights ``float32 [N, S]``: sum 1 over the valid elements, exactly 0 elsewhere."""
        scores = self.score(x).squeeze(-1).float()
        if log_prior is not None:
            scores = scores + log_prior.float()
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) * valid  # all-invalid rows: uniform * 0 = 0


class Encoder(nn.Module):
    """A stack of blocks over a set/sequence, a final LayerNorm and attention pooling."""

    def __init__(self, config: ModelConfig, n_layers: int):
        super().__init__()
        self.checkpointing = config.activation_checkpointing
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_heads, config.ffn_mult, config.dropout) for _ in range(n_layers))
        self.ln_out = LayerNorm(config.d_model)
        self.pool = AttentionPool(config.d_model)

    def contextualise(self, x: torch.Tensor, valid: torch.Tensor, log_weight: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[N, S, D]``, valid ``[N, S]`` -> contextual states ``[N, S, D]`` (after the final LayerNorm);
        ``log_weight [N, S]`` (optional) weights each element as a key (:func:`weighted_keys`)."""
        key_mask = weighted_keys(attendable_keys(valid), log_weight)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, key_mask, use_reentrant=False)
            else:
                x = block(x, key_mask)
        return self.ln_out(x)


class AsvStandardizer(nn.Module):
    """Standardise ASV vectors ``[K, D]`` per dimension with running statistics over the ASVs of the
    training batches (batch normalisation, Ioffe & Szegedy 2015, over ASVs instead of samples), then
    a learned scale and shift.

    Pooled nucleotide-transformer vectors share a large common component: on real tables, trained
    briefly, every pair of ASVs has cosine similarity ~0.99, so the differences between ASVs are ~1 %
    of each vector and the sample encoder (whose LayerNorm acts within a vector, not across ASVs)
    hardly tells them apart. Subtracting the mean over ASVs and dividing by the spread puts those
    differences at unit scale. Training standardises with the batch's own statistics (a batch of one
    ASV uses the running ones) and folds them into running statistics (a plain mean over the first
    batches, then an exponential average in which each new batch weighs ``STANDARDIZER_MOMENTUM``),
    which evaluation uses, so inference does not depend on the batch. The weight is high (0.5, not
    BatchNorm's 0.1) so that evaluation keeps up with a sequence encoder that is still training: at
    0.1, demo-data fine-tuning from scratch reached validation R² 0.37 instead of 0.83; standardising
    with the running statistics in training too cost pretraining (demo distance r 0.68-0.73 instead
    of >= 0.8). The running statistics are those of the global batch: with several ranks
    their moments are summed over ranks (a collective in every training forward), so every rank,
    and the export, hold the same ones. ``fixed = True`` (a fine-tuning that keeps a pretrained
    sequence path frozen) never changes them.
    Computed in float32 whatever the module dtype.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.fixed = False
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("running_mean", torch.zeros(d_model))
        self.register_buffer("running_var", torch.ones(d_model))
        self.register_buffer("batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """ASV vectors ``[K, D]`` -> standardised vectors ``[K, D]`` (batch statistics while training, running statistics in eval)."""
        x = vectors.float()
        mean, var = self.running_mean.float(), self.running_var.float()
        if self.training and not self.fixed:
            self._update_running(x)
            if x.shape[0] > 1:
                mean, var = x.mean(0), x.var(0, unbiased=False)
        standard = (x - mean) * torch.rsqrt(var + self.eps)
        return standard.to(vectors.dtype) * self.weight + self.bias

    @torch.no_grad()
    def _update_running(self, x: torch.Tensor) -> None:
        d = x.shape[1]
        moments = torch.cat([x.new_full((1,), x.shape[0]), x.sum(0), (x * x).sum(0)]).double()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(moments)
        n = float(moments[0])
        if n < 2:
            return
        mean = moments[1 : 1 + d] / n
        var = (moments[1 + d :] / n - mean * mean).clamp_min(0)
        self.batches_tracked += 1
        weight = max(STANDARDIZER_MOMENTUM, 1.0 / float(self.batches_tracked))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
        self.running_var.lerp_(var.to(self.running_var.dtype), weight)


def _hash_multipliers(n: int) -> list[int]:
    """Fixed pseudo-random multipliers ``r_l`` in [1, HASH_PRIME) of the ASV hash (a 64-bit LCG,
    so they are the same on every machine and torch version)."""
    state, out = 0x5DEECE66D, []
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(1 + (state >> 33) % (HASH_PRIME - 1))
    return out


def asv_hash_buckets(tokens: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Bucket of each ASV from its nucleotide tokens: ``int [..., L]`` -> ``int64 [...]`` in ``[1, n_buckets)``,
    0 for all-padding rows.

    A universal hash ``sum_l token_l * r_l mod (2**31 - 1)`` (Carter & Wegman 1979) with fixed
    multipliers: two different sequences share a bucket with probability about ``1 / (n_buckets - 1)``.
    Trailing padding does not change the hash, so the bucket does not depend on the batch's padding.
    """
    multipliers = torch.tensor(_hash_multipliers(tokens.shape[-1]), dtype=torch.int64, device=tokens.device)
    hashed = (tokens.long() * multipliers).sum(-1) % HASH_PRIME
    return torch.where((tokens != PAD).any(-1), 1 + hashed % (n_buckets - 1), 0)


def scatter_rows(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Place ``values [K, ...]`` at ``rows [K]`` of a zero tensor ``[n_rows, ...]`` (differentiable)."""
    return values.new_zeros(n_rows, *values.shape[1:]).index_put((rows,), values)


def sinusoidal_positions(n: int, d_model: int, device: torch.device) -> torch.Tensor:
    """Fixed sinusoidal position codes ``[n, d_model]`` (used for ASV order when ``asv_order``)."""
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    codes = torch.zeros(n, d_model, device=device)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return codes
