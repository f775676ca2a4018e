"""AAMModel: nucleotide transformer -> one vector per ASV -> sample transformer -> sample embedding.

Read top to bottom:

1. ``SelfAttention`` / ``Block``: a pre-LayerNorm transformer block on
   ``F.scaled_dot_product_attention`` with a boolean key-padding mask.
2. ``AttentionPool``: masked-softmax pooling of a set of vectors into one.
3. ``Encoder``: embedded tokens -> blocks -> final LayerNorm -> pooled vector (used twice).
4. ``AAMModel``: the ASV encoder runs only on the ASVs that are present (rows with ``counts > 0``),
   in chunks of ``asv_chunk_size``; the sample encoder reads each sample's ASV vectors (plus a
   log-abundance embedding) and pools them, plus a layer-normalised composition contrast
   (abundance-weighted pool minus plain mean, ``_composition``), into the sample embedding.
   ``forward`` computes only the outputs named in ``want`` (lazy outputs).

Padding safety: a sequence whose keys are all padding attends to all of its (meaningless) keys
instead of to none, so softmax never sees an all ``-inf`` row; pooled vectors of such sequences are
zeroed. Padding ASVs are never encoded at all. The sample encoder has no ASV positions unless
``model.asv_order`` is set, so its output does not depend on ASV order.

ASV vectors: pooled nucleotide-transformer vectors share a large common component (mean pairwise
cosine 0.995 measured on real tables), so ``AsvStandardizer`` standardises them across the ASVs of
a batch before the sample encoder reads them. A random forest wins by knowing *which* ASV each
abundance belongs to, so each ASV also gets a learned vector, looked up by a universal hash of its
nucleotide tokens (``asv_hash_buckets``) into ``model.asv_identity_buckets`` rows; it is used only
for buckets marked in ``asv_seen`` (ASVs of the training data), so an ASV never seen in training is
placed by the sequence encoder alone. ``model.asv_identity_dropout`` drops the learned vector of
random ASVs during training so that the sequence path keeps learning. With ``model.sample_layers``
0 the sample encoder is a deep set (Zaheer et al. 2017): LayerNorm, attention pool and the
composition contrast over the ASV vectors, no attention between ASVs.

``python -m aam_ds.model.aam`` prints the parameter count of every preset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aam_ds.data.sequences import PAD, VOCAB_SIZE
from aam_ds.errors import AamInputError
from aam_ds.model.heads import AbundanceHead, NucleotideHead, TaskHead, log_relative_abundance
from aam_ds.model.normalization import TargetNormalizer
from aam_ds.spec import MODEL_PRESETS, LossSpec, ModelSpec

HASH_PRIME = 2_147_483_647  # 2**31 - 1: the ASV hash is sum(token_l * r_l) mod this prime
COMPOSITION_INIT_SCALE = 0.1  # initial LayerNorm gain of the composition contrast (see AAMModel._composition)
# initial std of the learned ASV vectors (the transformer's 0.02: on Huang oral age, fine-tuning from
# scratch, std 1.0, as large as the standardised sequence vectors, overfits: grouped MAE 7.02 vs 6.66)
IDENTITY_INIT_STD = 0.02
STANDARDIZER_MOMENTUM = 0.1  # running statistics of AsvStandardizer (BatchNorm's default): ~the last 10 batches
OUTPUTS = frozenset({"sample_embedding", "nucleotide_logits", "abundance", "task"})


def attendable_keys(valid: torch.Tensor) -> torch.Tensor:
    """Key mask for attention ``[N, S]`` bool: the valid keys, or every key if none is valid."""
    return valid | ~valid.any(dim=-1, keepdim=True)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)  # a key bias would get no gradient
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x ``[N, S, D]``, key_mask ``[N, S]`` bool (True = may be attended) -> ``[N, S, D]``."""
        n, s, d = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(n, s, d))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model),
            nn.GELU(),
            nn.Linear(ffn_mult * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
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
        scores = self.score(x).squeeze(-1).float()
        if log_prior is not None:
            scores = scores + log_prior.float()
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * valid  # all-invalid rows: uniform * 0 = 0
        return torch.einsum("ns,nsd->nd", weights.to(x.dtype), x)


class Encoder(nn.Module):
    """A stack of blocks over a set/sequence, a final LayerNorm and attention pooling."""

    def __init__(self, spec: ModelSpec, n_layers: int):
        super().__init__()
        self.checkpointing = spec.activation_checkpointing
        self.blocks = nn.ModuleList(
            Block(spec.d_model, spec.n_heads, spec.ffn_mult, spec.dropout) for _ in range(n_layers)
        )
        self.ln_out = nn.LayerNorm(spec.d_model)
        self.pool = AttentionPool(spec.d_model)

    def contextualise(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x ``[N, S, D]``, valid ``[N, S]`` -> contextual states ``[N, S, D]`` (after the final LayerNorm)."""
        key_mask = attendable_keys(valid)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, key_mask, use_reentrant=False)
            else:
                x = block(x, key_mask)
        return self.ln_out(x)


class AsvStandardizer(nn.Module):
    """Standardise ASV vectors ``[K, D]`` across the ASVs of a batch, per dimension (batch
    normalisation, Ioffe & Szegedy 2015, over ASVs instead of samples), then a learned scale and shift.

    Pooled nucleotide-transformer vectors share a large common component: on real tables, trained
    briefly, every pair of ASVs has cosine similarity ~0.99, so the differences between ASVs are ~1 %
    of each vector and the sample encoder (whose LayerNorm acts within a vector, not across ASVs)
    hardly tells them apart. Subtracting the mean over ASVs and dividing by the spread puts those
    differences at unit scale. Training uses the batch's statistics (a batch of one ASV uses the
    running ones) and updates running averages (a plain mean over the first batches, then an
    exponential average with ``STANDARDIZER_MOMENTUM``), which evaluation uses, so inference does not
    depend on the batch. The running statistics are those of the global batch: with several ranks
    their moments are summed over ranks (a collective in every training forward), so every rank,
    and the export, hold the same ones. ``fixed = True`` (a fine-tuning that keeps a pretrained
    sequence path frozen) uses the running statistics in training too and never changes them.
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


class AAMModel(nn.Module):
    """The AAM encoder with its pretraining and task heads.

    Args:
        spec: the model section of the run spec.
        max_seq_len: nucleotides per ASV (size of the nucleotide position embedding).
        n_targets: regression targets (0 = no regression head).
        n_classes: classes (0 = no classification head); at most one of n_targets / n_classes.
        covariate_cardinalities: number of categories of each categorical covariate.
    """

    def __init__(
        self,
        spec: ModelSpec,
        max_seq_len: int,
        n_targets: int = 0,
        n_classes: int = 0,
        covariate_cardinalities: tuple[int, ...] | list[int] = (),
    ):
        super().__init__()
        if n_targets and n_classes:
            raise AamInputError("AAMModel", "both n_targets and n_classes were given", "a model has one task: regression or classification")
        self.spec = spec
        self.max_seq_len = max_seq_len
        d = spec.d_model
        # nucleotides of one ASV -> ASV vector
        self.token_embedding = nn.Embedding(VOCAB_SIZE, d)
        self.position_embedding = nn.Embedding(max_seq_len, d)
        self.asv_encoder = Encoder(spec, spec.asv_layers)
        self.asv_standardizer = AsvStandardizer(d)
        self.nucleotide_head = NucleotideHead(d)
        # learned per-ASV vectors, by sequence hash (see the module docstring)
        self.asv_identity = nn.Embedding(spec.asv_identity_buckets, d) if spec.asv_identity_buckets else None
        self.register_buffer("asv_seen", torch.zeros(spec.asv_identity_buckets, dtype=torch.bool))
        self._frozen_vectors: dict[bytes, torch.Tensor] = {}  # see _encode_frozen
        # ASV vectors of one sample -> sample embedding
        self.abundance_embedding = (
            nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d)) if spec.use_abundance else None
        )
        self.sample_encoder = Encoder(spec, spec.sample_layers)
        self.composition_norm = nn.LayerNorm(d)
        self.embedding_projection = nn.Linear(d, d)
        self.abundance_head = AbundanceHead(d)
        # fine-tuning
        n_out = n_targets or n_classes
        self.task_head = TaskHead(d, n_out, tuple(covariate_cardinalities)) if n_out else None
        self.target_normalizer = TargetNormalizer(n_targets) if n_targets else None
        self.apply(self._init_weights)
        for chain in (self.embedding_projection, self.task_head):
            if chain is not None:
                chain.apply(self._init_variance_preserving)
        if self.task_head is not None:  # output layer small: predictions start near the training mean
            self._init_weights(self.task_head.mlp[-1])
        nn.init.constant_(self.composition_norm.weight, COMPOSITION_INIT_SCALE)
        if self.asv_identity is not None:
            nn.init.normal_(self.asv_identity.weight, mean=0.0, std=IDENTITY_INIT_STD)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @staticmethod
    def _init_variance_preserving(module: nn.Module) -> None:
        """Std ``fan_in ** -0.5`` for the layers after the sample encoder (projection, task head): with
        the transformer's 0.02 they form a chain with gain ~0.16 per layer that shrinks both the
        sample-to-sample signal and the gradient reaching the encoder."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=module.in_features ** -0.5)

    # ---------------------------------------------------------------------------------------
    # ASV encoder

    def mark_asvs_seen(self, tokens: torch.Tensor) -> int:
        """Mark the identity buckets of ASVs ``int [K, L]`` (e.g. the training split's) as learned;
        returns how many buckets are marked in all. A no-op without the identity path."""
        if self.asv_identity is not None and len(tokens):
            self.asv_seen[asv_hash_buckets(torch.as_tensor(tokens).to(self.asv_seen.device), len(self.asv_seen))] = True
        return int(self.asv_seen.sum())

    def asv_vectors(self, tokens: torch.Tensor, asv_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ASV vectors of ``tokens int [K, L]``, each ``[K, D]``, for diagnostics (call in evaluation
        mode): ``pooled`` (the nucleotide encoder's output), ``sequence`` (standardised across ASVs:
        what the sequence path gives the sample encoder) and ``combined`` (with the learned identity
        vectors added: what the sample encoder reads)."""
        pooled, _ = self._encode_asvs(tokens, keep_states=False)
        sequence = self.asv_standardizer(pooled)
        combined = sequence + self._identity(tokens if asv_ids is None else asv_ids, asv_ids is not None, sequence)
        return {"pooled": pooled, "sequence": sequence, "combined": combined}

    def _identity(self, tokens_or_ids: torch.Tensor, are_ids: bool, like: torch.Tensor) -> torch.Tensor:
        """Learned vectors ``[K, D]`` of ASVs (tokens ``[K, L]`` or bucket ids ``[K]``); zero for buckets
        not seen in training and, while training, for a random ``asv_identity_dropout`` share."""
        if self.asv_identity is None:
            return torch.zeros_like(like)
        ids = tokens_or_ids if are_ids else asv_hash_buckets(tokens_or_ids, len(self.asv_seen))
        keep = self.asv_seen[ids]
        if self.training and self.spec.asv_identity_dropout > 0:
            keep = keep & (torch.rand(ids.shape, device=ids.device) >= self.spec.asv_identity_dropout)
        return self.asv_identity(ids) * keep[:, None].to(like.dtype)

    def _encode_frozen(self, tokens: torch.Tensor) -> torch.Tensor:
        """ASV vectors ``[N, D]`` from the fixed nucleotide encoder, memoised by sequence: fine-tuning
        with ``freeze_sequence_encoder`` encodes each distinct ASV once. The memo is dropped whenever
        weights are loaded or moved (``load_state_dict``, ``to``)."""
        keys = [row.tobytes() for row in tokens.cpu().numpy()]
        missing: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._frozen_vectors and key not in missing:
                missing[key] = i
        if missing:
            was_training = self.asv_encoder.training
            self.asv_encoder.eval()  # one fixed vector per ASV: no dropout
            with torch.no_grad():
                vectors, _ = self._encode_chunks(tokens[torch.tensor(list(missing.values()), device=tokens.device)], False)
            self.asv_encoder.train(was_training)
            self._frozen_vectors.update(zip(missing, vectors))
        if not keys:
            return self.token_embedding.weight.new_zeros(0, self.spec.d_model)
        return torch.stack([self._frozen_vectors[key] for key in keys])

    def _apply(self, fn, *args, **kwargs):
        self._frozen_vectors = {}
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self._frozen_vectors = {}
        return super().load_state_dict(*args, **kwargs)

    def _encode_asvs(self, tokens: torch.Tensor, keep_states: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens ``[N, L]`` of present ASVs -> (ASV vectors ``[N, D]``, token states ``[N, L, D]`` or None).

        With ``model.freeze_sequence_encoder`` (and no nucleotide output wanted) the nucleotide
        encoder runs without gradients."""
        if self.spec.freeze_sequence_encoder and not keep_states:
            return self._encode_frozen(tokens), None
        return self._encode_chunks(tokens, keep_states)

    def _encode_chunks(self, tokens: torch.Tensor, keep_states: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        chunk = self.spec.asv_chunk_size or max(tokens.shape[0], 1)
        vectors, states = [], []  # an empty batch still yields one empty chunk
        for part in tokens.split(chunk):
            valid = part != PAD
            positions = torch.arange(part.shape[1], device=part.device)
            x = self.token_embedding(part) + self.position_embedding(positions)
            h = self.asv_encoder.contextualise(x, valid)
            vectors.append(self.asv_encoder.pool(h, valid))
            if keep_states:
                states.append(h)
        return torch.cat(vectors), (torch.cat(states) if keep_states else None)

    # ---------------------------------------------------------------------------------------
    # forward

    def forward(
        self,
        tokens: torch.Tensor,
        counts: torch.Tensor,
        want: set[str] | frozenset[str],
        covariates: torch.Tensor | None = None,
        asv_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the outputs named in ``want`` and nothing else.

        Args:
            tokens: ``int64 [B, A, L]`` nucleotide tokens (PAD rows for missing ASVs).
            counts: ``float [B, A]`` read counts; an ASV is present where ``counts > 0``.
            want: subset of ``OUTPUTS``.
            covariates: ``int64 [B, C]`` category codes (needed when the task head has covariates).
            asv_ids: ``int64 [B, A]`` identity buckets (``asv_hash_buckets``) of the unmasked ASVs; by
                default hashed from ``tokens``, so pass them when ``tokens`` are masked.

        Returns: dict with the requested entries among ``sample_embedding [B, D]``,
        ``nucleotide_logits [B, A, L, VOCAB_SIZE]`` (zeros on missing ASVs), ``abundance [B, A]``
        (predicted log relative abundance) and ``task [B, T]`` (normalised units) or ``[B, n_classes]``.
        """
        self._check_inputs(tokens, counts, want, covariates)
        if not want:
            return {}
        b, a, seq_len = tokens.shape
        present = counts > 0  # [B, A]
        rows = present.reshape(-1).nonzero().squeeze(1)  # flat indices of present ASVs
        out: dict[str, torch.Tensor] = {}

        asv_vectors, token_states = self._encode_asvs(
            tokens.reshape(b * a, seq_len)[rows], keep_states="nucleotide_logits" in want
        )
        if token_states is not None:
            logits = self.nucleotide_head(token_states)
            out["nucleotide_logits"] = scatter_rows(logits, rows, b * a).view(b, a, seq_len, VOCAB_SIZE)

        if not want & {"sample_embedding", "abundance", "task"}:
            return out
        asv_vectors = self.asv_standardizer(asv_vectors)
        if asv_ids is None:
            identity = self._identity(tokens.reshape(b * a, seq_len)[rows], False, asv_vectors)
        else:
            identity = self._identity(asv_ids.reshape(-1)[rows], True, asv_vectors)
        x = scatter_rows(asv_vectors + identity, rows, b * a).view(b, a, self.spec.d_model)
        if self.abundance_embedding is not None:
            x = x + self.abundance_embedding(log_relative_abundance(counts)[..., None].to(x.dtype)) * present[..., None]
        if self.spec.asv_order:
            x = x + sinusoidal_positions(a, self.spec.d_model, x.device).to(x.dtype)
        h = self.sample_encoder.contextualise(x, present)
        if "abundance" in want:
            out["abundance"] = self.abundance_head(h) * present
        if want & {"sample_embedding", "task"}:
            embedding = self.embedding_projection(self._composition(h, counts, present))
            if "sample_embedding" in want:
                out["sample_embedding"] = embedding
            if "task" in want:
                out["task"] = self.task_head(embedding, covariates)
        return out

    def _composition(self, h: torch.Tensor, counts: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """ASV states ``[B, A, D]`` -> pooled sample vector ``[B, D]``: the attention pool plus a
        layer-normalised composition contrast (abundance-weighted pool minus the plain mean).

        ASV states share a large common component (every sample draws from the same ASVs), so the
        attention pool alone differs between samples by ~1% of its norm and fine-tuning collapses to
        the mean target. The contrast cancels the common part and keeps which of a sample's ASVs
        dominate (relative abundance, reweighted by the learned score) at a scale set by the LayerNorm
        gain (``COMPOSITION_INIT_SCALE`` at init, not the ~1% of the common part); the plain pool
        keeps which ASVs are present (what unweighted UniFrac measures).
        """
        weighted = self.sample_encoder.pool(h, present, log_relative_abundance(counts))
        mean = (h * present[..., None]).sum(dim=1) / present.sum(dim=1, keepdim=True).clamp_min(1)
        return self.sample_encoder.pool(h, present) + self.composition_norm(weighted - mean)

    def _check_inputs(self, tokens, counts, want, covariates) -> None:
        unknown = set(want) - OUTPUTS
        if unknown:
            raise AamInputError("AAMModel.forward(want=...)", f"unknown outputs {sorted(unknown)}", f"choose from {sorted(OUTPUTS)}")
        if "task" in want and self.task_head is None:
            raise AamInputError("AAMModel.forward(want=...)", "'task' requested but the model has no task head", "build the model with n_targets or n_classes")
        if tokens.dim() != 3 or counts.shape != tokens.shape[:2]:
            raise AamInputError(
                "batch",
                f"tokens {tuple(tokens.shape)} and counts {tuple(counts.shape)} do not match",
                "pass tokens [B, A, L] and counts [B, A]",
            )
        if tokens.shape[2] > self.max_seq_len:
            raise AamInputError(
                "batch tokens", f"ASVs have {tokens.shape[2]} positions but the model was built for {self.max_seq_len}",
                "build the model with the data's max_seq_len",
            )
        if "task" in want:
            self.task_head.check_covariates(covariates, tokens.shape[0])


# -------------------------------------------------------------------------------------------
# losses -> outputs, parameter counts


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


def count_parameters(spec: ModelSpec, max_seq_len: int = 150) -> int:
    """Parameters of the encoders and pretraining heads, counted on the meta device (no memory).

    The ASV identity table (``asv_identity_buckets x d_model``, of which a step reads only the rows
    of its batch's ASVs) is not included: see :func:`identity_table_parameters`."""
    with torch.device("meta"):
        model = AAMModel(spec, max_seq_len)
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("asv_identity."))


def identity_table_parameters(spec: ModelSpec) -> int:
    """Entries of the ASV identity lookup table, ``asv_identity_buckets * d_model``."""
    return spec.asv_identity_buckets * spec.d_model


def preset_parameter_table(max_seq_len: int = 150) -> list[tuple[str, int]]:
    return [(name, count_parameters(ModelSpec(preset=name), max_seq_len)) for name in MODEL_PRESETS]


if __name__ == "__main__":
    print(f"{'preset':<8}{'d_model':>8}{'heads':>6}{'asv':>5}{'sample':>7}{'parameters':>16}{'identity table':>16}")
    for name, n in preset_parameter_table():
        p = MODEL_PRESETS[name]
        table = identity_table_parameters(ModelSpec(preset=name))
        print(f"{name:<8}{p['d_model']:>8}{p['n_heads']:>6}{p['asv_layers']:>5}{p['sample_layers']:>7}{n:>16,}{table:>16,}")
