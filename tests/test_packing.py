"""Encoding each distinct ASV of a batch once (aam_ds.model.packing) leaves the training loss and
its gradients as they were, on a real demo batch through the real objective."""

from __future__ import annotations

import pytest
import torch

from aam_ds.data.dataset import collate
from aam_ds.data.prepare import prepare_data
from aam_ds.engine.setup import build_objective
from aam_ds.engine.steps import seed_micro_step
from aam_ds.export import model_config
from aam_ds.model.aam import AAMModel
from aam_ds.model.packing import distinct_rows
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
