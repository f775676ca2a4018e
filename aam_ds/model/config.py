"""ModelConfig: the architecture and run-time switches of :class:`aam_ds.model.aam.AAMModel`.

Kept beside the model, as nanoGPT keeps ``GPTConfig`` next to ``GPT``, so that the model package
depends on torch alone: the run spec's model section (``aam_ds.spec.ModelSpec``, with its presets
and validation) is turned into a ModelConfig by :func:`aam_ds.export.model_config`, which the
engine calls when it builds a model and :func:`aam_ds.export.build_exported_model` when it loads one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Widths and depths of both transformers and the switches the forward pass reads.

    ``d_model`` must be divisible by ``n_heads``; ``sample_layers`` 0 makes the sample encoder a deep
    set. ``asv_identity_buckets`` rows of learned ASV vectors (0 = off), dropped with probability
    ``asv_identity_dropout`` in training. ``asv_chunk_size`` ASVs encoded per chunk (0 = all at once).

    Raises:
        ValueError: a width or depth that cannot build a model (an internal contract: the run spec
            refuses such values with its own messages first).
    """

    d_model: int
    n_heads: int
    asv_layers: int
    sample_layers: int
    ffn_mult: int
    dropout: float = 0.0
    use_abundance: bool = True
    asv_order: bool = False
    asv_chunk_size: int = 0
    activation_checkpointing: bool = False
    asv_identity_buckets: int = 65536
    asv_identity_dropout: float = 0.1
    freeze_sequence_encoder: bool = False

    def __post_init__(self) -> None:
        if min(self.d_model, self.n_heads, self.asv_layers, self.ffn_mult) <= 0 or self.sample_layers < 0:
            raise ValueError(f"ModelConfig: widths and depths must be positive (sample_layers >= 0), got {self}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
