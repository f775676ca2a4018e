"""AAMModel: nucleotide transformer -> one vector per ASV -> sample transformer -> sample embedding.

Its building blocks (transformer block, attention pool, encoder, ASV standardiser, ASV hash) are
in :mod:`aam_ds.model.blocks`. The ASV encoder runs only on the ASVs that are present (rows with
``counts > 0``), in chunks of ``asv_chunk_size``; padding ASVs are never encoded at all. The sample
encoder reads each sample's ASV vectors (plus a log-abundance embedding) and pools them, plus a
layer-normalised composition contrast (abundance-weighted pool minus plain mean,
``_composition``), into the sample embedding. ``forward`` computes only the outputs named in
``want`` (lazy outputs). The sample encoder has no ASV positions unless ``model.asv_order`` is set,
so its output does not depend on ASV order.

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

``python -m aam_ds.engine.memory`` prints the parameter count of every preset.
"""

from __future__ import annotations

import torch
from torch import nn

from aam_ds.model.blocks import AsvStandardizer, Encoder, LayerNorm, asv_hash_buckets, embed_fp32, scatter_rows, sinusoidal_positions
from aam_ds.model.config import ModelConfig
from aam_ds.model.heads import AbundanceHead, NucleotideHead, TaskHead, log_relative_abundance
from aam_ds.model.normalization import TargetNormalizer
from aam_ds.model.packing import distinct_rows
from aam_ds.model.vocabulary import PAD, VOCAB_SIZE

COMPOSITION_INIT_SCALE = 0.1  # initial LayerNorm gain of the composition contrast (see AAMModel._composition)
# initial std of the learned ASV vectors (the transformer's 0.02: on Huang oral age, fine-tuning from
# scratch, std 1.0, as large as the standardised sequence vectors, overfits: grouped MAE 7.02 vs 6.66)
IDENTITY_INIT_STD = 0.02
OUTPUTS = frozenset({"sample_embedding", "nucleotide_logits", "abundance", "task"})


class AAMModel(nn.Module):
    """The AAM encoder with its pretraining and task heads.

    Args:
        config: widths, depths and switches (:class:`aam_ds.model.config.ModelConfig`).
        max_seq_len: nucleotides per ASV (size of the nucleotide position embedding).
        n_targets: regression targets (0 = no regression head).
        n_classes: classes (0 = no classification head); at most one of n_targets / n_classes.
        covariate_cardinalities: number of categories of each categorical covariate.
    """

    def __init__(
        self,
        config: ModelConfig,
        max_seq_len: int,
        n_targets: int = 0,
        n_classes: int = 0,
        covariate_cardinalities: tuple[int, ...] | list[int] = (),
    ):
        super().__init__()
        if n_targets and n_classes:
            raise ValueError("AAMModel: both n_targets and n_classes were given; a model has one task (regression or classification)")
        self.config = config
        self.max_seq_len = max_seq_len
        d = config.d_model
        # nucleotides of one ASV -> ASV vector
        self.token_embedding = nn.Embedding(VOCAB_SIZE, d)
        self.position_embedding = nn.Embedding(max_seq_len, d)
        self.asv_encoder = Encoder(config, config.asv_layers)
        self.asv_standardizer = AsvStandardizer(d)
        self.nucleotide_head = NucleotideHead(d)
        # learned per-ASV vectors, by sequence hash (see the module docstring)
        self.asv_identity = nn.Embedding(config.asv_identity_buckets, d) if config.asv_identity_buckets else None
        self.register_buffer("asv_seen", torch.zeros(config.asv_identity_buckets, dtype=torch.bool))
        self._frozen_vectors: dict[bytes, torch.Tensor] = {}  # see _encode_frozen
        self.pack_asvs = True  # encode each distinct ASV of a batch once (exact; aam_ds.model.packing)
        # ASV vectors of one sample -> sample embedding
        self.abundance_embedding = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d)) if config.use_abundance else None
        self.sample_encoder = Encoder(config, config.sample_layers)
        self.composition_norm = LayerNorm(d)
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
            nn.init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)

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
        if self.training and self.config.asv_identity_dropout > 0:
            keep = keep & (torch.rand(ids.shape, device=ids.device) >= self.config.asv_identity_dropout)
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
            return self.token_embedding.weight.new_zeros(0, self.config.d_model)
        return torch.stack([self._frozen_vectors[key] for key in keys])

    def _apply(self, fn, *args, **kwargs):
        self._frozen_vectors = {}
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        """``nn.Module.load_state_dict``, dropping the frozen-vector memo first."""
        self._frozen_vectors = {}
        return super().load_state_dict(*args, **kwargs)

    def _encode_asvs(
        self, tokens: torch.Tensor, keep_states: bool, nucleotide_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens ``[N, L]`` of present ASVs -> (ASV vectors ``[N, D]``, token states or None).

        The states are those of ``tokens`` (``[N, L, D]``, with ``keep_states``) or, when
        ``nucleotide_tokens [M, L]`` is given, those of ``nucleotide_tokens`` (``[M, L, D]``), encoded in
        the same pass. Each distinct row of ``tokens`` is encoded once (``pack_asvs``, see
        :mod:`aam_ds.model.packing`). With ``model.freeze_sequence_encoder`` (and no token states
        wanted) the nucleotide encoder runs without gradients."""
        if self.config.freeze_sequence_encoder and not keep_states and nucleotide_tokens is None:
            return self._encode_frozen(tokens), None
        index = None
        if self.pack_asvs and not (self.training and self.config.dropout > 0):
            tokens, index = distinct_rows(tokens)  # each distinct ASV once (aam_ds.model.packing)
        if nucleotide_tokens is None:
            vectors, states = self._encode_chunks(tokens, keep_states)
            if index is not None and states is not None:
                states = states[index]
        else:  # one pass: the sample path's ASVs, then the rows the nucleotide head reads
            vectors, states = self._encode_chunks(torch.cat([tokens, nucleotide_tokens]), True)
            vectors, states = vectors[: len(tokens)], states[len(tokens) :]
        return (vectors if index is None else vectors[index]), states

    def _encode_chunks(self, tokens: torch.Tensor, keep_states: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        # one chunk without asv_chunk_size (an empty batch too): no split, so a traced graph keeps N dynamic
        parts = tokens.split(self.config.asv_chunk_size) if self.config.asv_chunk_size else (tokens,)
        vectors, states = [], []
        for part in parts:
            valid = part != PAD
            positions = torch.arange(part.shape[1], device=part.device)
            x = (embed_fp32(self.token_embedding, part) + self.position_embedding(positions)).to(self.position_embedding.weight.dtype)
            h = self.asv_encoder.contextualise(x, valid)
            vectors.append(self.asv_encoder.pool(h, valid))
            if keep_states:
                states.append(h)
        if len(parts) == 1:  # no copy of the one chunk's states
            return vectors[0], (states[0] if keep_states else None)
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
        nucleotide_tokens: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the outputs named in ``want`` and nothing else.

        Args:
            tokens: ``int64 [B, A, L]`` nucleotide tokens (PAD rows for missing ASVs).
            counts: ``float [B, A]`` read counts; an ASV is present where ``counts > 0``.
            want: subset of ``OUTPUTS``.
            covariates: ``int64 [B, C]`` category codes (needed when the task head has covariates).
            asv_ids: ``int64 [B, A]`` identity buckets (``asv_hash_buckets``) of the unmasked ASVs; by
                default hashed from ``tokens``, so pass them when ``tokens`` are masked.
            nucleotide_tokens: ``int64 [M, L]`` (masked) ASV sequences whose nucleotide logits are
                wanted, encoded in the same pass as ``tokens`` (masked-nucleotide pretraining passes
                the unmasked ``tokens`` for the sample path and masked copies here; see
                :mod:`aam_ds.model.packing`). By default the logits are those of ``tokens``.

        Returns: dict with the requested entries among ``sample_embedding [B, D]``,
        ``nucleotide_logits [B, A, L, VOCAB_SIZE]`` (zeros on missing ASVs; ``[M, L, VOCAB_SIZE]``
        with ``nucleotide_tokens``), ``abundance [B, A]``
        (predicted log relative abundance) and ``task [B, T]`` (normalised units) or ``[B, n_classes]``.
        """
        self._check_inputs(tokens, counts, want, covariates, nucleotide_tokens)
        if not want:
            return {}
        b, a, seq_len = tokens.shape
        present = counts > 0  # [B, A]
        rows = present.reshape(-1).nonzero().squeeze(1)  # flat indices of present ASVs
        out: dict[str, torch.Tensor] = {}

        logits_wanted = "nucleotide_logits" in want
        asv_vectors, token_states = self._encode_asvs(
            tokens.reshape(b * a, seq_len)[rows], logits_wanted, nucleotide_tokens if logits_wanted else None
        )
        if token_states is not None:
            logits = self.nucleotide_head(token_states)
            if nucleotide_tokens is None:
                logits = scatter_rows(logits, rows, b * a).view(b, a, seq_len, VOCAB_SIZE)
            out["nucleotide_logits"] = logits

        if not want & {"sample_embedding", "abundance", "task"}:
            return out
        asv_vectors = self.asv_standardizer(asv_vectors)
        if asv_ids is None:
            identity = self._identity(tokens.reshape(b * a, seq_len)[rows], False, asv_vectors)
        else:
            identity = self._identity(asv_ids.reshape(-1)[rows], True, asv_vectors)
        x = self.sample_inputs(scatter_rows(asv_vectors + identity, rows, b * a).view(b, a, self.config.d_model), counts)
        return out | self.sample_outputs(x, counts, want, covariates)

    def sample_inputs(self, asv_vectors: torch.Tensor, counts: torch.Tensor, log_abundance: torch.Tensor | None = None) -> torch.Tensor:
        """What the sample encoder reads: ASV vectors ``[B, A, D]`` (standardised sequence vector plus
        learned identity vector; zeros on padding) plus the log-abundance embedding (and ASV positions
        with ``model.asv_order``) -> ``[B, A, D]``. ``log_abundance [B, A]`` (optional) is embedded
        instead of the counts' log relative abundance. In evaluation mode an ASV's vector does not
        depend on the sample (``AsvStandardizer`` uses its running statistics), which
        :mod:`aam_ds.explain` uses."""
        x = asv_vectors
        if self.abundance_embedding is not None:
            present = counts > 0
            log_abundance = log_relative_abundance(counts) if log_abundance is None else log_abundance
            x = x + self.abundance_embedding(log_abundance[..., None].to(x.dtype)) * present[..., None]
        if self.config.asv_order:
            x = x + sinusoidal_positions(x.shape[1], self.config.d_model, x.device).to(x.dtype)
        return x

    def sample_outputs(
        self,
        x: torch.Tensor,
        counts: torch.Tensor,
        want: set[str] | frozenset[str],
        covariates: torch.Tensor | None = None,
        presence: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The sample encoder's outputs named in ``want`` (``sample_embedding``, ``abundance``, ``task``)
        from its inputs ``x [B, A, D]`` (:meth:`sample_inputs`) and the counts ``[B, A]``.

        ``presence`` (optional, ``float [B, A]`` in [0, 1]; default 1 where ``counts > 0``, else 0) is a
        soft membership of each ASV slot in its sample: a slot of presence ``p`` weighs as ``p`` copies
        of itself in the sample encoder's attention and in every pool (``log p`` is added to its scores),
        0 is absent. Integrated gradients (:mod:`aam_ds.explain.importance`) move it between an ASV's
        absence and its presence; with ``presence`` given, ``counts`` must be positive wherever it is.
        """
        present = counts > 0 if presence is None else presence > 0
        log_presence = None if presence is None else presence.float().clamp_min(torch.finfo(torch.float32).tiny).log()
        out: dict[str, torch.Tensor] = {}
        h = self.sample_encoder.contextualise(x, present, log_presence)
        if "abundance" in want:
            out["abundance"] = self.abundance_head(h) * present
        if want & {"sample_embedding", "task"}:
            embedding = self.embedding_projection(self._composition(h, counts, present, log_presence))
            if "sample_embedding" in want:
                out["sample_embedding"] = embedding
            if "task" in want:
                out["task"] = self.task_head(embedding, covariates)
        return out

    def _composition(
        self, h: torch.Tensor, counts: torch.Tensor, present: torch.Tensor, log_presence: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ASV states ``[B, A, D]`` -> pooled sample vector ``[B, D]``: the attention pool plus a
        layer-normalised composition contrast (abundance-weighted pool minus the plain mean), each
        element weighted by ``exp(log_presence)`` when given (see :meth:`sample_outputs`).

        ASV states share a large common component (every sample draws from the same ASVs), so the
        attention pool alone differs between samples by ~1% of its norm and fine-tuning collapses to
        the mean target. The contrast cancels the common part and keeps which of a sample's ASVs
        dominate (relative abundance, reweighted by the learned score) at a scale set by the LayerNorm
        gain (``COMPOSITION_INIT_SCALE`` at init, not the ~1% of the common part); the plain pool
        keeps which ASVs are present (what unweighted UniFrac measures).
        """
        log_abundance = log_relative_abundance(counts)
        weighted = self.sample_encoder.pool(h, present, log_abundance if log_presence is None else log_abundance + log_presence)
        if log_presence is None:
            mean = (h * present[..., None]).sum(dim=1) / present.sum(dim=1, keepdim=True).clamp_min(1)
        else:
            weight = log_presence.exp() * present
            mean = (h * weight[..., None].to(h.dtype)).sum(dim=1) / weight.sum(dim=1, keepdim=True).clamp_min(1e-12).to(h.dtype)
        return self.sample_encoder.pool(h, present, log_presence) + self.composition_norm(weighted - mean)

    def _check_inputs(self, tokens, counts, want, covariates, nucleotide_tokens) -> None:
        unknown = set(want) - OUTPUTS
        if unknown:
            raise ValueError(f"AAMModel.forward: unknown outputs {sorted(unknown)} in want; choose from {sorted(OUTPUTS)}")
        if "task" in want and self.task_head is None:
            raise ValueError("AAMModel.forward: 'task' requested but the model has no task head (build it with n_targets or n_classes)")
        if tokens.dim() != 3 or counts.shape != tokens.shape[:2]:
            raise ValueError(
                f"AAMModel.forward: tokens {tuple(tokens.shape)} and counts {tuple(counts.shape)} do not match "
                "(tokens [B, A, L], counts [B, A])"
            )
        if nucleotide_tokens is not None and (nucleotide_tokens.dim() != 2 or nucleotide_tokens.shape[1] != tokens.shape[2]):
            raise ValueError(
                f"AAMModel.forward: nucleotide_tokens {tuple(nucleotide_tokens.shape)} do not match tokens {tuple(tokens.shape)} "
                "(nucleotide_tokens [M, L], tokens [B, A, L])"
            )
        if tokens.shape[2] > self.max_seq_len:
            raise ValueError(f"AAMModel.forward: ASVs have {tokens.shape[2]} positions but the model was built for {self.max_seq_len}")
        if "task" in want:
            self.task_head.check_covariates(covariates, tokens.shape[0])


# -------------------------------------------------------------------------------------------
# parameter counts


def count_parameters(config: ModelConfig, max_seq_len: int = 150) -> int:
    """Parameters of the encoders and pretraining heads, counted on the meta device (no memory).

    The ASV identity table (``asv_identity_buckets x d_model``, of which a step reads only the rows
    of its batch's ASVs) is not included: it has ``config.asv_identity_buckets * config.d_model`` entries."""
    with torch.device("meta"):
        model = AAMModel(config, max_seq_len)
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("asv_identity."))
