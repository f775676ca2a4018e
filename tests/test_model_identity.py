"""The ASV identity path: hashing, the unseen-ASV fallback, masking, the frozen-encoder memo, export."""

from __future__ import annotations

import dataclasses

import torch

from aam_ds.data.sequences import PAD
from aam_ds.export import model_config
from aam_ds.model.aam import AAMModel
from aam_ds.model.blocks import asv_hash_buckets
from aam_ds.spec import ModelSpec

L = 20


def sequences(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 5, (n, L), generator=g)
    tokens[::2, L - 4 :] = PAD  # some shorter ASVs
    return tokens


def test_hash_ignores_padding_width_and_separates_sequences():
    tokens = sequences(500)
    buckets = asv_hash_buckets(tokens, 65536)
    wider = torch.cat([tokens, torch.full((500, 7), PAD)], dim=1)
    assert torch.equal(asv_hash_buckets(wider, 65536), buckets)
    assert ((buckets >= 1) & (buckets < 65536)).all()
    assert len(set(buckets.tolist())) >= 495  # ~2 collisions expected among 500 in 65,535 buckets
    assert asv_hash_buckets(torch.full((3, L), PAD), 65536).tolist() == [0, 0, 0]


def test_unseen_asvs_use_the_sequence_encoder_alone():
    torch.manual_seed(0)
    config = model_config(ModelSpec(preset="tiny", asv_identity_dropout=0.0))
    model = AAMModel(config, L).eval()
    without = AAMModel(dataclasses.replace(config, asv_identity_buckets=0), L).eval()
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("asv_identity", "asv_seen"))}, strict=False)
    tokens, counts = sequences(6).view(2, 3, L), torch.tensor([[5.0, 3, 1], [2, 2, 8]])
    emb = lambda m: m(tokens, counts, {"sample_embedding"})["sample_embedding"]  # noqa: E731
    torch.testing.assert_close(emb(model), emb(without))  # nothing seen yet: identical
    assert model.mark_asvs_seen(tokens.view(-1, L)[:3]) == 3
    changed = emb(model)
    torch.testing.assert_close(changed[1], emb(without)[1])  # sample 2's ASVs are still unseen
    assert not torch.allclose(changed[0], emb(without)[0])


def test_masked_tokens_keep_their_identity_when_ids_are_passed():
    torch.manual_seed(0)
    model = AAMModel(model_config(ModelSpec(preset="tiny", asv_identity_dropout=0.0)), L).eval()
    tokens = sequences(4).view(1, 4, L)
    model.mark_asvs_seen(tokens.view(-1, L))
    masked = tokens.clone()
    masked[..., 0] = 6  # the MASK token
    ids = asv_hash_buckets(tokens, model.config.asv_identity_buckets)
    with_ids = model.asv_vectors(masked.view(-1, L), ids.view(-1))
    plain = model.asv_vectors(tokens.view(-1, L))
    sequence_masked = model.asv_vectors(masked.view(-1, L))["sequence"]
    torch.testing.assert_close(with_ids["combined"] - sequence_masked, plain["combined"] - plain["sequence"])


def test_frozen_sequence_encoder_memo_matches_a_fresh_encoding_and_gets_no_gradient():
    torch.manual_seed(0)
    spec = ModelSpec(preset="tiny", freeze_sequence_encoder=True, asv_identity_dropout=0.0)
    model = AAMModel(model_config(spec), L, n_targets=1)
    tokens, counts = sequences(6).view(2, 3, L), torch.tensor([[5.0, 3, 1], [2, 2, 8]])
    out = model(tokens, counts, {"task"})["task"]
    out.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("asv_encoder", "token_embedding")))
    fresh, _ = model._encode_chunks(tokens.view(-1, L), keep_states=False)
    memo = model._encode_frozen(tokens.view(-1, L))
    torch.testing.assert_close(memo, fresh.detach())
    model.load_state_dict(model.state_dict())
    assert model._frozen_vectors == {}  # loading weights drops the memo


def test_seen_buckets_travel_with_the_state_dict():
    model = AAMModel(model_config(ModelSpec(preset="tiny")), L)
    model.mark_asvs_seen(sequences(10))
    copy = AAMModel(model_config(ModelSpec(preset="tiny")), L)
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy.asv_seen, model.asv_seen) and int(copy.asv_seen.sum()) == 10
