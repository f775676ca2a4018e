"""Attention extraction (aam_ds.explain.attention): the hooks leave every output unchanged, the
recorded weights are the ones the model applies, sum to 1 over the attended ASVs / nucleotides,
and give padding exactly 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aam_ds.data.sequences import PAD
from aam_ds.explain.attention import capture_attention, nucleotide_attention
from aam_ds.export import model_config
from aam_ds.model.aam import OUTPUTS, AAMModel
from aam_ds.spec import ModelSpec


@pytest.fixture(scope="module")
def model_and_batch():
    """A two-layer sample encoder with random weights large enough for peaked attention, and a batch
    whose samples have 4, 2 and 6 of 6 ASV slots (the rest padding) and ASVs of different lengths."""
    torch.manual_seed(0)
    model = AAMModel(model_config(ModelSpec(preset="tiny", sample_layers=2, asv_layers=2)), max_seq_len=24, n_targets=1)
    for param in model.parameters():
        param.data.normal_(0.0, 0.3)
    model.mark_asvs_seen(torch.randint(1, 5, (3, 24)))
    tokens = torch.randint(1, 5, (3, 6, 24))
    tokens[:, :, 18:] = PAD  # every ASV shorter than the padded length ...
    tokens[1, 0, 12:] = PAD  # ... one much shorter
    counts = torch.randint(1, 50, (3, 6)).float()
    counts[0, 4:] = 0
    counts[1, 2:] = 0
    tokens[counts == 0] = PAD
    return model.eval(), tokens, counts


def test_capture_leaves_every_output_unchanged(model_and_batch):
    model, tokens, counts = model_and_batch
    with torch.no_grad():
        plain = model(tokens, counts, OUTPUTS)
        with capture_attention(model) as record:
            captured = model(tokens, counts, OUTPUTS)
        after = model(tokens, counts, OUTPUTS)  # hooks removed on exit
    assert set(record) == {"sample.layer0", "sample.layer1", "sample.pool", "sample.pool_weighted", "asv.layer0", "asv.layer1", "asv.pool"}
    for name in OUTPUTS:
        torch.testing.assert_close(captured[name], plain[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(after[name], plain[name], rtol=0, atol=0)
    assert not model.sample_encoder.blocks[0].attn._forward_hooks


def test_sample_weights_sum_to_one_over_present_asvs_and_padding_is_zero(model_and_batch):
    model, tokens, counts = model_and_batch
    present = counts > 0
    with torch.no_grad(), capture_attention(model) as record:
        model(tokens, counts, {"task"})
    for layer in ("sample.layer0", "sample.layer1"):
        weights = record[layer][0]  # [B, H, A, A]
        assert weights.shape == (3, model.config.n_heads, 6, 6)
        rows = weights.sum(dim=-1)
        torch.testing.assert_close(
            rows[present[:, None, :].expand_as(rows)], torch.ones(int(present.sum()) * model.config.n_heads), atol=1e-6, rtol=0
        )
        assert (weights.permute(0, 2, 3, 1)[~present] == 0).all()  # padding as query: a row of exact zeros
        assert (weights.permute(0, 3, 1, 2)[~present] == 0).all()  # padding as key: exactly 0
        assert weights.std() > 0.01  # not uniform: the check above is not trivially met
    for pool in ("sample.pool", "sample.pool_weighted"):
        weights = record[pool][0]
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(3), atol=1e-6, rtol=0)
        assert (weights[~present] == 0).all()


def test_recorded_weights_are_the_ones_the_model_applies(model_and_batch):
    """Weights @ values through the output projection reproduce SDPA's output: the recomputation
    is the model's own attention, not an approximation of it."""
    model, tokens, counts = model_and_batch
    attn = model.sample_encoder.blocks[0].attn
    x = torch.randn(3, 6, model.config.d_model)
    key_mask = counts > 0
    with torch.no_grad():
        weights = attn.attention_weights(x, key_mask)
        n, s, d = x.shape
        v = attn.qkv(x).view(n, s, 3, attn.n_heads, d // attn.n_heads)[:, :, 2].transpose(1, 2)
        rebuilt = attn.proj((weights @ v).transpose(1, 2).reshape(n, s, d))
        torch.testing.assert_close(rebuilt, attn(x, key_mask), atol=1e-5, rtol=1e-5)


def test_nucleotide_attention_covers_only_the_asvs_bases(model_and_batch):
    model, tokens, _ = model_and_batch
    asvs = tokens[1, :2]  # one ASV of 12 nucleotides, one of 18
    found = nucleotide_attention(model, asvs)
    assert found.layers.shape == (2, 2, model.config.n_heads, 24, 24)
    valid = (asvs != PAD).numpy()
    for k in range(2):
        np.testing.assert_allclose(found.pool[k].sum(), 1.0, atol=1e-6)
        assert (found.pool[k][~valid[k]] == 0).all()
        layer = found.layers[:, k]  # [layers, H, L, L]
        np.testing.assert_allclose(layer[:, :, valid[k]].sum(axis=-1), 1.0, atol=1e-6)
        assert (layer[..., ~valid[k]] == 0).all() and (layer[:, :, ~valid[k], :] == 0).all()
