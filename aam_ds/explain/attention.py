"""Attention weights of an AAM model, read out without changing what it computes.

``F.scaled_dot_product_attention`` does not return its weights, so :func:`capture_attention`
registers forward hooks that recompute them from each module's own inputs
(:meth:`SelfAttention.attention_weights`, :meth:`AttentionPool.weights`) and record them; the
hooks return nothing, so the model's outputs are those of a run without them (tested to 1e-6).

Recorded keys (one list entry per forward call of the module):

- ``sample.layer<i>``: ``float32 [B, H, A, A]`` (query ASV, key ASV) in sample-encoder layer ``i``;
  every row of a present ASV sums to 1 over the sample's present ASVs, padding keys get exactly 0
  and padding query rows are all 0;
- ``sample.pool``: ``[B, A]`` attention-pooling weights of the ASV states that form the sample
  embedding; ``sample.pool_weighted``: the abundance-weighted pool of the composition contrast
  (``AAMModel._composition``);
- ``asv.layer<i>``: ``[K, H, L, L]`` nucleotide-level attention within each encoded ASV;
  ``asv.pool``: ``[K, L]`` the nucleotide pooling weights that form each ASV vector.

The weights depend only on the model and its inputs, so they are the same for an export from any
ZeRO stage (the export holds the consolidated fp32 weights).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from aam_ds.explain.forward import SampleForward
from aam_ds.model.aam import AAMModel


@contextmanager
def capture_attention(model: AAMModel) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the attention weights of every forward call of ``model`` inside the block.

    Yields a dict ``key -> list of tensors`` (keys in the module docstring), filled as the model
    runs; the hooks are removed on exit. Weights are detached float32 tensors on the model's device.
    """
    record: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = []
    for name, encoder in (("sample", model.sample_encoder), ("asv", model.asv_encoder)):
        for i, block in enumerate(encoder.blocks):
            handles.append(block.attn.register_forward_hook(_layer_hook(record, f"{name}.layer{i}")))
        handles.append(encoder.pool.register_forward_hook(_pool_hook(record, f"{name}.pool")))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _layer_hook(record: dict, key: str):
    def hook(module, args, output) -> None:
        x, key_mask = args
        with torch.no_grad():
            weights = module.attention_weights(x, key_mask)
        record[key].append((weights * key_mask[:, None, :, None]).detach())  # padding queries: rows of 0

    return hook


def _pool_hook(record: dict, key: str):
    def hook(module, args, output) -> None:
        weighted = len(args) > 2 and args[2] is not None
        with torch.no_grad():
            weights = module.weights(*args)
        record[f"{key}_weighted" if weighted else key].append(weights.detach().float())

    return hook


@dataclass
class NucleotideAttention:
    """Attention within ASVs: ``layers`` ``float32 [n_layers, K, H, L, L]`` and ``pool`` ``[K, L]``
    over each ASV's nucleotides (padding positions exactly 0)."""

    layers: np.ndarray
    pool: np.ndarray


@torch.no_grad()
def nucleotide_attention(model: AAMModel, tokens: torch.Tensor) -> NucleotideAttention:
    """Nucleotide-level attention of the ASV encoder for ASVs ``tokens int [K, L]``.

    The ASV encoder reads each ASV on its own, so these weights do not depend on the sample. The
    encoder is run directly (not through the memo of ``freeze_sequence_encoder``, which would skip it)."""
    model.eval()
    with capture_attention(model) as record:
        model._encode_chunks(tokens, keep_states=False)
    n_layers = len(model.asv_encoder.blocks)
    layers = [torch.cat(record[f"asv.layer{i}"]).cpu().numpy() for i in range(n_layers)]
    length = tokens.shape[1]
    stacked = np.stack(layers) if layers else np.zeros((0, len(tokens), model.config.n_heads, length, length), np.float32)
    return NucleotideAttention(stacked, torch.cat(record["asv.pool"]).cpu().numpy())


@dataclass
class AttentionMaps:
    """Sample-encoder attention of every explained sample on its ASVs, ``float32 [N, K]`` each (0
    where an ASV is absent): ``pool`` (attention-pooling weight into the sample embedding),
    ``pool_weighted`` (the abundance-weighted pool) and ``received`` (attention the ASV receives,
    averaged over layers, heads and the sample's ASVs as queries; 0 without sample layers)."""

    pool: np.ndarray
    pool_weighted: np.ndarray
    received: np.ndarray


@torch.no_grad()
def attention_maps(forward: SampleForward, on_samples: Callable[[int], None] | None = None) -> AttentionMaps:
    """:class:`AttentionMaps` of the samples of ``forward.data``."""
    n, k = forward.data.counts.shape
    maps = AttentionMaps(*(np.zeros((n, k), dtype=np.float32) for _ in range(3)))
    for start in range(0, n, forward.batch_size):
        rows = np.arange(start, min(start + forward.batch_size, n))
        record, batch = _recorded(forward, rows)
        slots = batch.slots.cpu().numpy()
        b, a = np.nonzero(slots >= 0)
        for name in ("pool", "pool_weighted"):
            getattr(maps, name)[rows[b], slots[b, a]] = record[f"sample.{name}"][0].cpu().numpy()[b, a]
        layers = [record[f"sample.layer{i}"][0] for i in range(len(forward.model.sample_encoder.blocks))]
        if layers:
            per_key = torch.stack(layers).mean(dim=(0, 2)).sum(dim=1)  # [B, A]: summed over queries
            queries = (batch.counts > 0).sum(dim=1, keepdim=True).clamp_min(1)
            maps.received[rows[b], slots[b, a]] = (per_key / queries).cpu().numpy()[b, a]
        if on_samples is not None:
            on_samples(len(rows))
    return maps


@torch.no_grad()
def sample_attention(forward: SampleForward, row: int) -> dict[str, np.ndarray]:
    """The attention of one sample (row of ``forward.data``) over its ``k`` present ASVs:
    ``columns`` ``int64 [k]`` (ASV columns of the data), ``layers`` ``float32 [n_layers, H, k, k]``,
    ``pool`` and ``pool_weighted`` ``[k]``."""
    record, batch = _recorded(forward, np.array([row]))
    k = int((batch.slots >= 0).sum())
    n_layers = len(forward.model.sample_encoder.blocks)
    layers = [record[f"sample.layer{i}"][0][0, :, :k, :k].cpu().numpy() for i in range(n_layers)]
    heads = forward.model.config.n_heads
    return {
        "columns": batch.slots[0, :k].cpu().numpy(),
        "layers": np.stack(layers) if layers else np.zeros((0, heads, k, k), np.float32),
        "pool": record["sample.pool"][0][0, :k].cpu().numpy(),
        "pool_weighted": record["sample.pool_weighted"][0][0, :k].cpu().numpy(),
    }


def _recorded(forward: SampleForward, rows: np.ndarray):
    batch = forward.batch(forward.data.counts, rows)
    with capture_attention(forward.model) as record:
        want = {"task"} if forward.model.task_head is not None else {"sample_embedding"}
        forward.model.sample_outputs(forward.asv_inputs(batch), batch.counts, want, batch.covariates)
    return record, batch
