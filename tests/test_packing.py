"""Encoding each distinct ASV of a batch once (aam_ds.model.packing) leaves the training loss and
its gradients as they were, on a real demo batch through the real objective; masked-nucleotide
pretraining feeds the unmasked ASVs to the sample path and masks one copy of each distinct ASV."""

from __future__ import annotations

import pytest
import torch

from aam_ds.data.dataset import collate
from aam_ds.data.prepare import prepare_data
from aam_ds.engine.setup import build_objective
from aam_ds.engine.steps import seed_micro_step
from aam_ds.export import model_config
from aam_ds.model.aam import AAMModel
from aam_ds.model.blocks import asv_hash_buckets
from aam_ds.model.masking import IGNORE_INDEX, mask_nucleotides
from aam_ds.model.packing import distinct_rows
from aam_ds.model.vocabulary import VOCAB_SIZE
from aam_ds.spec import build_spec


def loss_and_grads(model: AAMModel, objective, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model.zero_grad()
    parts = objective(model, batch, seed_micro_step(0, 3, 0))
    parts["loss"].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {name: float(value.detach()) for name, value in parts.items()}, grads


def test_packing_does_not_change_the_loss_or_gradients_of_a_fixed_batch(demo, cache):
    spec = build_spec({"data": {"cache_dir": str(cache), "max_asvs": 24, "max_seq_len": 100}, "model": {"preset": "tiny"}})
    data = prepare_data(spec)
    dataset = data.dataset("train")
    batch = collate([dataset[i] for i in range(8)])
    rows = batch["tokens"].reshape(-1, batch["tokens"].shape[-1])[batch["counts"].reshape(-1) > 0]
    assert len(distinct_rows(rows)[0]) < len(rows)  # the batch shares ASVs between samples: packing has work to do
    torch.manual_seed(0)
    model = AAMModel(model_config(spec.model), max_seq_len=100)
    model.mark_asvs_seen(data.tokens)
    objective = build_objective(spec, data, torch.device("cpu"), model)
    assert spec.loss.pairwise_weight > 0 and spec.loss.nucleotide_weight > 0
    model.pack_asvs = False
    unpacked, unpacked_grads = loss_and_grads(model, objective, batch)
    model.pack_asvs = True
    packed, packed_grads = loss_and_grads(model, objective, batch)
    assert packed == pytest.approx(unpacked, rel=1e-5, abs=1e-7)
    assert packed_grads.keys() == unpacked_grads.keys()
    # equal up to float summation order: relative to the whole gradient, and per tensor where it is not
    # itself rounding noise (ln_out.bias of the ASV encoder gets ~0: the standardiser removes the batch mean)
    flat = torch.cat([g.flatten() for g in unpacked_grads.values()])
    difference = torch.cat([(packed_grads[name] - g).flatten() for name, g in unpacked_grads.items()])
    assert difference.norm() < 1e-4 * flat.norm()
    largest = max(g.norm() for g in unpacked_grads.values())
    for name, grad in unpacked_grads.items():
        if grad.norm() > 0.01 * largest:
            assert (packed_grads[name] - grad).norm() < 1e-3 * grad.norm(), name


def test_masked_pretraining_reads_unmasked_asvs_and_masks_each_distinct_asv_once(demo, cache):
    """The sample path sees the ASVs as they are; the nucleotide head one masked copy of each distinct
    ASV of the valid samples (aam_ds.model.packing.nucleotide_rows)."""
    spec = build_spec({"data": {"cache_dir": str(cache), "max_asvs": 24, "max_seq_len": 100}, "model": {"preset": "tiny"}})
    data = prepare_data(spec)
    batch = collate([data.dataset("train")[i] for i in range(6)])
    torch.manual_seed(0)
    model = AAMModel(model_config(spec.model), max_seq_len=100).eval()  # eval: no identity dropout, running statistics
    model.mark_asvs_seen(data.tokens)
    objective = build_objective(spec, data, torch.device("cpu"), model)
    valid = torch.tensor([True, True, True, True, False, False])
    out, labels = objective.forward(model, batch, torch.Generator().manual_seed(0), valid)
    unmasked = model(batch["tokens"], batch["counts"], {"sample_embedding"})["sample_embedding"]
    torch.testing.assert_close(out["sample_embedding"], unmasked, rtol=1e-5, atol=1e-6)
    rows = batch["tokens"][:4].reshape(-1, 100)[batch["counts"][:4].reshape(-1) > 0]
    distinct = torch.unique(rows, dim=0)
    assert len(distinct) < len(rows)  # copies shared between samples: each is masked and predicted once
    assert labels.shape == distinct.shape and out["nucleotide_logits"].shape == (*distinct.shape, VOCAB_SIZE)
    selected = labels != IGNORE_INDEX
    assert 0 < selected.sum() and (labels[selected] == distinct[selected]).all()


def test_mask_sample_path_feeds_the_masked_copies_to_the_sample_path_with_their_unmasked_identity(demo, cache):
    """``loss.mask_sample_path``: every copy of an ASV is masked on its own and the sample path reads
    the masked copies (the pretraining of sessions 1-5); each keeps the learned identity vector of its
    unmasked sequence; samples not marked valid have no masked positions to predict."""
    spec = build_spec(
        {
            "data": {"cache_dir": str(cache), "max_asvs": 24, "max_seq_len": 100},
            "model": {"preset": "tiny"},
            "loss": {"mask_sample_path": True},
        }
    )
    data = prepare_data(spec)
    batch = collate([data.dataset("train")[i] for i in range(6)])
    torch.manual_seed(0)
    model = AAMModel(model_config(spec.model), max_seq_len=100).eval()
    model.mark_asvs_seen(data.tokens)
    objective = build_objective(spec, data, torch.device("cpu"), model)
    valid = torch.tensor([True, True, True, True, False, False])
    out, labels = objective.forward(model, batch, torch.Generator().manual_seed(0), valid)
    assert labels.shape == batch["tokens"].shape and out["nucleotide_logits"].shape == (*batch["tokens"].shape, VOCAB_SIZE)
    selected = labels != IGNORE_INDEX
    assert selected[:4].sum() > 0 and not selected[4:].any()
    assert (labels[selected] == batch["tokens"][selected]).all()
    redrawn, _ = mask_nucleotides(batch["tokens"], spec.loss.mask_fraction, torch.Generator().manual_seed(0))  # the same draws
    ids = asv_hash_buckets(batch["tokens"], model.config.asv_identity_buckets)
    expected = model(redrawn, batch["counts"], {"sample_embedding"}, None, ids)["sample_embedding"]
    torch.testing.assert_close(out["sample_embedding"], expected, rtol=1e-5, atol=1e-6)
    unmasked = model(batch["tokens"], batch["counts"], {"sample_embedding"})["sample_embedding"]
    assert not torch.allclose(out["sample_embedding"], unmasked, atol=1e-4)
