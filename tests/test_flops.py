"""The analytic FLOP count (aam_ds.engine.flops) against torch's own counter, on real batches."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from aam_ds.data.dataset import collate
from aam_ds.data.prepare import prepare_data
from aam_ds.data.sequences import PAD
from aam_ds.engine.flops import forward_flops, training_flops
from aam_ds.engine.peak import peak_flops
from aam_ds.export import model_config
from aam_ds.model.aam import AAMModel
from aam_ds.model.packing import nucleotide_rows
from aam_ds.spec import build_spec

WANT = frozenset({"sample_embedding", "nucleotide_logits"})


@pytest.fixture(scope="module")
def demo_train(demo, cache):
    spec = build_spec({"data": {"cache_dir": str(cache), "max_asvs": 24, "max_seq_len": 100}, "model": {"preset": "tiny"}})
    return spec, prepare_data(spec).dataset("train")


def counted_step(model: AAMModel, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs torch counts for one forward and backward (attention by the math kernel, which the counter sees)."""
    masked = nucleotide_rows(batch["tokens"], batch["counts"])  # the rows the objective masks (unmasked here: same FLOPs)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(batch["tokens"], batch["counts"], WANT, nucleotide_tokens=masked)
        (out["sample_embedding"].square().sum() + out["nucleotide_logits"].square().mean()).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("pack", [True, False])
def test_training_flops_of_a_real_batch_are_within_10_percent_of_torchs_counter(demo_train, pack):
    spec, dataset = demo_train
    torch.manual_seed(0)
    model = AAMModel(model_config(spec.model), max_seq_len=100)
    model.pack_asvs = pack
    batch = collate([dataset[i] for i in range(8)])
    counted = counted_step(model, batch)
    analytic = training_flops(model, batch, WANT).executed
    assert counted > 0 and abs(analytic - counted) / counted < 0.10, (analytic, counted)


def test_model_flops_leave_out_padding(demo_train):
    """Padding (empty ASV slots, PAD nucleotides) adds executed FLOPs but no model FLOPs."""
    spec, dataset = demo_train
    model = AAMModel(model_config(spec.model), max_seq_len=120)
    batch = collate([dataset[i] for i in range(4)])
    tokens = F.pad(batch["tokens"], (0, 20, 0, 5), value=PAD)  # 20 more positions, 5 more ASV slots
    counts = F.pad(batch["counts"], (0, 5))
    plain, padded = forward_flops(model, batch["tokens"], batch["counts"], WANT), forward_flops(model, tokens, counts, WANT)
    assert padded.model == plain.model
    assert padded.executed > plain.executed >= plain.model


def test_a_memoised_frozen_encoder_counts_only_the_sample_encoder(demo_train):
    """With ``model.freeze_sequence_encoder`` and no nucleotide output, each ASV's vector comes from
    the memo after its first step: the count of a later step matches torch's counter of that step."""
    spec, dataset = demo_train
    want = frozenset({"sample_embedding"})
    model = AAMModel(model_config(spec.model.model_copy(update={"freeze_sequence_encoder": True})), max_seq_len=100)
    batch = collate([dataset[i] for i in range(8)])
    model(batch["tokens"], batch["counts"], want)  # fills the memo
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch["tokens"], batch["counts"], want)["sample_embedding"].square().sum().backward()
    counted, analytic = counter.get_total_flops(), training_flops(model, batch, want).executed
    assert counted > 0 and abs(analytic - counted) / counted < 0.10, (analytic, counted)


def test_device_peak_is_measured_once_then_kept_at_the_highest_rate_seen(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_DS_PEAK_CACHE", str(tmp_path / "peak.json"))
    cpu = torch.device("cpu")
    measured = peak_flops(cpu, "fp32")
    key = next(iter(json.loads((tmp_path / "peak.json").read_text())))
    assert 1e8 < measured < 1e14 and "fp32" in key
    (tmp_path / "peak.json").write_text(json.dumps({key: 1e18}))  # a higher rate on record is kept
    assert peak_flops(cpu, "fp32") == 1e18
    (tmp_path / "peak.json").write_text(json.dumps({key: 1.0}))  # a low first measurement is replaced
    assert peak_flops(cpu, "fp32") > 1e8 and json.loads((tmp_path / "peak.json").read_text())[key] > 1e8
