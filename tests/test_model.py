"""AAMModel: shapes per preset, padding / order invariance, NaN safety, gradient paths, lazy memory."""

from __future__ import annotations

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker  # torch's own per-device peak tracker (works on CPU)

from aam_ds.engine.objective import check_loss_compatible, required_outputs
from aam_ds.errors import AamInputError
from aam_ds.export import model_config
from aam_ds.model.aam import OUTPUTS, AAMModel, count_parameters
from aam_ds.model.heads import log_relative_abundance
from aam_ds.model.losses import (
    abundance_loss,
    classification_loss,
    masked_nucleotide_loss,
    pairwise_distance_loss,
    regression_loss,
)
from aam_ds.model.masking import mask_nucleotides
from aam_ds.model.vocabulary import PAD, VOCAB_SIZE
from aam_ds.spec import MODEL_PRESETS, LossSpec, ModelSpec

SEQ_LEN = 24


def make_batch(n_asvs_per_sample: list[int], max_asvs: int, seq_len: int = SEQ_LEN, seed: int = 0):
    """Random ASVs of varying length; sample i has n_asvs_per_sample[i] present ASVs, the rest PAD rows."""
    g = torch.Generator().manual_seed(seed)
    b = len(n_asvs_per_sample)
    tokens = torch.full((b, max_asvs, seq_len), PAD, dtype=torch.int64)
    counts = torch.zeros(b, max_asvs)
    for i, n in enumerate(n_asvs_per_sample):
        for a in range(n):
            length = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=g))
            tokens[i, a, :length] = torch.randint(1, 5, (length,), generator=g)
            counts[i, a] = float(torch.randint(1, 100, (1,), generator=g))
    return tokens, counts


def tiny(**overrides) -> ModelSpec:
    return ModelSpec(preset="tiny", **overrides)


def model(spec: ModelSpec | None = None, seed: int = 0, **kwargs) -> AAMModel:
    torch.manual_seed(seed)
    return AAMModel(model_config(spec or tiny()), SEQ_LEN, **kwargs).eval()


# ---------------------------------------------------------------------------------------------
# shapes and parameter counts


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_every_preset_structure_gives_the_contract_shapes(preset):
    cfg = MODEL_PRESETS[preset]
    # the preset's depth, heads and FFN ratio, at a width small enough for a CPU test
    spec = ModelSpec(preset=preset, d_model=4 * cfg["n_heads"])
    tokens, counts = make_batch([3, 1, 5], max_asvs=5)
    reg = model(spec, n_targets=2, covariate_cardinalities=(3, 2))
    covariates = torch.tensor([[0, 1], [2, 0], [1, 1]])
    out = reg(tokens, counts, OUTPUTS, covariates=covariates)
    d = spec.d_model
    assert out["sample_embedding"].shape == (3, d)
    assert out["nucleotide_logits"].shape == (3, 5, SEQ_LEN, VOCAB_SIZE)
    assert out["abundance"].shape == (3, 5)
    assert out["task"].shape == (3, 2)
    clf = model(spec, n_classes=4)
    assert clf(tokens, counts, {"task"})["task"].shape == (3, 4)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_parameter_counts_tiny_under_1m_and_large_about_400m():
    assert count_parameters(model_config(ModelSpec(preset="tiny"))) < 1_000_000
    large = ModelSpec(preset="large")
    d, layers = large.d_model, large.asv_layers + large.sample_layers
    # a pre-LN block: qkv (3d^2, no bias) + out proj (d^2 + d) + FFN (8d^2 + 5d) + two LayerNorms (4d)
    blocks = layers * (12 * d * d + 10 * d)
    n = count_parameters(model_config(large))
    assert blocks <= n <= 1.01 * blocks  # blocks dominate; embeddings and heads add < 1 %
    assert 380e6 <= n <= 420e6


def test_an_export_written_before_model_config_loads_into_the_same_model(tmp_path):
    """The export format did not change with ModelConfig: a model.pt as the earlier writer saved it
    (the run spec's model section as pydantic dumped it, presets applied, and the constructor
    arguments) rebuilds the same architecture and outputs through aam_ds.export."""
    from aam_ds.export import EXPORT_FORMAT, build_exported_model, load_export

    spec = tiny(asv_identity_buckets=32, sample_layers=0)
    trained = model(spec, n_targets=1)
    old_payload = {
        "format": EXPORT_FORMAT,
        "state_dict": trained.state_dict(),
        "spec": {"model": spec.model_dump(mode="json")},
        "model_args": {"max_seq_len": SEQ_LEN, "n_targets": 1, "n_classes": 0, "covariate_cardinalities": []},
        "targets": None,
        "step": 3,
    }
    torch.save(old_payload, tmp_path / "model.pt")
    loaded = build_exported_model(load_export(tmp_path / "model.pt"))
    assert loaded.config == model_config(spec) and loaded.config.sample_layers == 0 and loaded.config.asv_identity_buckets == 32
    tokens, counts = make_batch([3, 1, 5], max_asvs=5)
    torch.testing.assert_close(sample_outputs(loaded, tokens, counts), sample_outputs(trained, tokens, counts))


def test_python_m_prints_the_preset_table():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "aam_ds.engine.memory"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in MODEL_PRESETS:
        assert name in result.stdout
    assert f"{count_parameters(model_config(ModelSpec(preset='large'))):,}" in result.stdout


# ---------------------------------------------------------------------------------------------
# invariances and padding safety


def sample_outputs(m: AAMModel, tokens, counts) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return m(tokens, counts, OUTPUTS - {"task"})


@pytest.mark.parametrize("chunk", [0, 2])
def test_output_of_a_sample_does_not_change_when_padding_is_added(chunk):
    m = model(tiny(asv_chunk_size=chunk))
    tokens, counts = make_batch([4], max_asvs=4)
    base = sample_outputs(m, tokens, counts)
    # the same sample with 5 extra PAD rows, 6 extra PAD positions per ASV, batched with others
    others_t, others_c = make_batch([9, 2], max_asvs=9, seq_len=SEQ_LEN, seed=1)
    padded_t = torch.full((3, 9, SEQ_LEN), PAD, dtype=torch.int64)
    padded_c = torch.zeros(3, 9)
    padded_t[0, :4], padded_c[0, :4] = tokens[0], counts[0]
    padded_t[1:], padded_c[1:] = others_t, others_c
    wide = AAMModel(m.config, SEQ_LEN + 6).eval()
    wide.load_state_dict(
        {**m.state_dict(), "position_embedding.weight": torch.cat([m.position_embedding.weight, torch.zeros(6, m.config.d_model)])}
    )
    padded_t = torch.cat([padded_t, torch.full((3, 9, 6), PAD)], dim=2)
    padded = sample_outputs(wide, padded_t, padded_c)
    torch.testing.assert_close(padded["sample_embedding"][0], base["sample_embedding"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded["abundance"][0, :4], base["abundance"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded["nucleotide_logits"][0, :4, :SEQ_LEN], base["nucleotide_logits"][0], atol=1e-5, rtol=0)


def test_sample_embedding_does_not_depend_on_asv_order_unless_asked():
    tokens, counts = make_batch([6, 3], max_asvs=6)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    m = model()
    base = sample_outputs(m, tokens, counts)
    shuffled = sample_outputs(m, tokens[:, perm], counts[:, perm])
    torch.testing.assert_close(shuffled["sample_embedding"], base["sample_embedding"], atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled["abundance"], base["abundance"][:, perm], atol=1e-5, rtol=0)

    ordered = model(tiny(asv_order=True))
    a = sample_outputs(ordered, tokens, counts)["sample_embedding"]
    b = sample_outputs(ordered, tokens[:, perm], counts[:, perm])["sample_embedding"]
    assert (a - b).abs().max() > 1e-4


def test_soft_presence_weighs_an_asv_as_that_many_copies_of_itself():
    """``presence`` (what aam-ds explain's integrated gradients interpolate): 1 is the sample, 0 takes the
    ASV out of every attention and pool, and two copies of an ASV at 0.5 equal the one at 1."""
    m = model(n_targets=1)
    tokens, counts = make_batch([5], max_asvs=5)
    share = log_relative_abundance(counts)  # embedded as given: the copies below must not change it

    def outputs(rows: list[int], presence: list[float] | None = None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            vectors = m.asv_vectors(tokens[0, rows])["combined"][None]
            x = m.sample_inputs(vectors, counts[:, rows], share[:, rows])
            return m.sample_outputs(
                x, counts[:, rows], {"task", "sample_embedding"}, None, None if presence is None else torch.tensor([presence])
            )

    sample = outputs([0, 1, 2, 3, 4])
    for name, value in outputs([0, 1, 2, 3, 4], [1.0] * 5).items():
        torch.testing.assert_close(value, sample[name], atol=1e-6, rtol=0)
    for name, value in outputs([0, 1, 2, 3, 4], [1.0, 1.0, 0.0, 1.0, 1.0]).items():
        torch.testing.assert_close(value, outputs([0, 1, 3, 4])[name], atol=1e-6, rtol=0)
    for name, value in outputs([0, 1, 2, 3, 4, 0], [0.5, 1.0, 1.0, 1.0, 1.0, 0.5]).items():
        torch.testing.assert_close(value, sample[name], atol=1e-5, rtol=0)
    assert (outputs([0, 1, 2, 3, 4], [1.0, 1.0, 0.5, 1.0, 1.0])["task"] - sample["task"]).abs().max() > 1e-4


def test_all_padding_sample_and_single_asv_sample_give_finite_outputs_and_gradients():
    tokens, counts = make_batch([0, 1, 3], max_asvs=3)
    m = model(n_targets=1).train()
    out = m(tokens, counts, OUTPUTS)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert (out["nucleotide_logits"][0] == 0).all() and (out["abundance"][0] == 0).all()
    masked, labels = mask_nucleotides(tokens, 0.3, torch.Generator().manual_seed(0))
    out = m(masked, counts, OUTPUTS)
    loss = (
        pairwise_distance_loss(out["sample_embedding"], torch.tensor([[0.0, 0.5, 0.7], [0.5, 0.0, 0.2], [0.7, 0.2, 0.0]]))
        + masked_nucleotide_loss(out["nucleotide_logits"], labels)
        + abundance_loss(out["abundance"], counts)
        + regression_loss(out["task"], torch.zeros(3, 1))
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_a_batch_without_any_asv_is_finite():
    tokens, counts = make_batch([0, 0], max_asvs=4)
    out = model()(tokens, counts, OUTPUTS - {"task"})
    assert all(torch.isfinite(v).all() for v in out.values())


def test_chunking_and_checkpointing_do_not_change_outputs_or_gradients():
    tokens, counts = make_batch([5, 2, 4], max_asvs=5)
    target = torch.tensor([[0.0, 0.4, 0.9], [0.4, 0.0, 0.6], [0.9, 0.6, 0.0]])
    grads = []
    for overrides in ({}, {"asv_chunk_size": 3}, {"asv_chunk_size": 2, "activation_checkpointing": True}):
        m = model(tiny(**overrides))
        out = m(tokens, counts, {"sample_embedding"})
        pairwise_distance_loss(out["sample_embedding"], target).backward()
        grads.append((out["sample_embedding"].detach(), [p.grad.clone() for p in m.asv_encoder.parameters()]))
    for emb, g in grads[1:]:
        torch.testing.assert_close(emb, grads[0][0], atol=1e-5, rtol=0)
        for a, b in zip(g, grads[0][1]):  # float32 summation order differs: tolerance relative to the gradient's scale
            torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# gradient paths and lazy outputs


def trained_by(m: AAMModel, loss: torch.Tensor) -> set[str]:
    m.zero_grad(set_to_none=True)
    loss.backward()
    return {name for name, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def prefixed(m: AAMModel, *prefixes: str) -> set[str]:
    return {name for name, _ in m.named_parameters() if name.startswith(prefixes)}


def test_each_loss_trains_exactly_the_parameters_on_its_path():
    tokens, counts = make_batch([4, 3, 5, 2], max_asvs=5)
    masked, labels = mask_nucleotides(tokens, 0.3, torch.Generator().manual_seed(0))
    target = torch.rand(4, 4)
    target = target + target.T
    m = model(tiny(use_abundance=False, dropout=0.0), n_targets=1, covariate_cardinalities=(3,)).train()
    m.mark_asvs_seen(masked.reshape(-1, masked.shape[-1]))  # the learned ASV vectors are on the sample path
    everything = prefixed(m, "")
    covariates = torch.tensor([[0], [1], [2], [1]])

    out = m(masked, counts, {"sample_embedding"})
    assert trained_by(m, pairwise_distance_loss(out["sample_embedding"], target)) == everything - prefixed(
        m, "nucleotide_head", "abundance_head", "task_head"
    )
    out = m(masked, counts, {"nucleotide_logits"})
    assert trained_by(m, masked_nucleotide_loss(out["nucleotide_logits"], labels)) == prefixed(
        m, "token_embedding", "position_embedding", "asv_encoder.blocks", "asv_encoder.ln_out", "nucleotide_head"
    )
    out = m(masked, counts, {"abundance"})
    assert trained_by(m, abundance_loss(out["abundance"], counts)) == everything - prefixed(
        m, "nucleotide_head", "composition_norm", "embedding_projection", "sample_encoder.pool", "task_head"
    )
    out = m(masked, counts, {"task"}, covariates=covariates)
    assert trained_by(m, regression_loss(out["task"], torch.randn(4, 1))) == everything - prefixed(m, "nucleotide_head", "abundance_head")
    # the abundance embedding is on the pairwise path when the model uses abundances
    m2 = model(tiny(use_abundance=True), n_classes=3).train()
    out = m2(masked, counts, {"sample_embedding", "task"})
    loss = pairwise_distance_loss(out["sample_embedding"], target) + classification_loss(out["task"], torch.tensor([0, 2, 1, 1]))
    assert prefixed(m2, "abundance_embedding") <= trained_by(m2, loss)


def test_forward_returns_only_the_requested_outputs():
    tokens, counts = make_batch([2, 3], max_asvs=3)
    m = model(n_targets=1)
    for want in ({"sample_embedding"}, {"nucleotide_logits"}, {"abundance", "task"}, set()):
        assert set(m(tokens, counts, want)) == want


def peak_bytes_of_step(m: AAMModel, want: set[str], tokens, counts, labels, target) -> int:
    m.zero_grad(set_to_none=True)
    tracker = MemTracker()
    tracker.track_external(m)
    with tracker:
        out = m(tokens, counts, want)
        loss = torch.zeros(())
        if "sample_embedding" in want:
            loss = loss + pairwise_distance_loss(out["sample_embedding"], target)
        if "nucleotide_logits" in want:
            loss = loss + masked_nucleotide_loss(out["nucleotide_logits"], labels)
        if "task" in want:
            loss = loss + regression_loss(out["task"], torch.zeros(out["task"].shape))
        loss.backward()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def test_lazy_outputs_reduce_the_peak_memory_of_a_step():
    tokens, counts = make_batch([12] * 6, max_asvs=12)
    masked, labels = mask_nucleotides(tokens, 0.15, torch.Generator().manual_seed(0))
    target = torch.rand(6, 6)
    m = model(n_targets=1).train()
    logits_bytes = tokens.numel() * VOCAB_SIZE * 4
    pretrain = peak_bytes_of_step(m, {"sample_embedding", "nucleotide_logits"}, masked, counts, labels, target)
    pairwise_only = peak_bytes_of_step(m, {"sample_embedding"}, masked, counts, labels, target)
    finetune = peak_bytes_of_step(m, {"task"}, masked, counts, labels, target)
    # dropping the nucleotide output saves at least its logits tensor [B, A, L, V]
    assert pretrain - pairwise_only >= logits_bytes
    assert pretrain - finetune >= logits_bytes


def test_evaluation_without_nucleotide_logits_frees_token_states_chunk_by_chunk():
    tokens, counts = make_batch([12] * 6, max_asvs=12)
    m = model(tiny(asv_chunk_size=8))

    def peak(want):
        tracker = MemTracker()
        tracker.track_external(m)
        with tracker, torch.no_grad():
            m(tokens, counts, want)
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    states_bytes = tokens.numel() * m.config.d_model * 4  # token states of every ASV, kept only for the logits
    assert peak({"sample_embedding", "nucleotide_logits"}) - peak({"sample_embedding"}) >= states_bytes


# ---------------------------------------------------------------------------------------------
# losses -> outputs, and refused inputs


def test_required_outputs_follow_the_loss_weights():
    assert required_outputs(LossSpec()) == {"sample_embedding", "nucleotide_logits"}
    assert required_outputs(LossSpec(pairwise_weight=0, nucleotide_weight=0, task="regression")) == {"task"}
    assert required_outputs(LossSpec(nucleotide_weight=0, abundance_weight=0.5)) == {"sample_embedding", "abundance"}


def test_abundance_loss_with_abundance_input_is_refused():
    with pytest.raises(AamInputError, match="use_abundance"):
        check_loss_compatible(tiny(use_abundance=True), LossSpec(abundance_weight=1.0))
    check_loss_compatible(tiny(use_abundance=False), LossSpec(abundance_weight=1.0))


def test_bad_requests_are_programming_errors_with_their_traceback():
    """A wrong call of the model is a bug in the caller, not bad user input: ValueError (shown with its
    traceback), never AamInputError (printed as one line of "bad input")."""
    tokens, counts = make_batch([2], max_asvs=2)
    calls = {
        "unknown outputs": lambda: model()(tokens, counts, {"embedding"}),
        "no task head": lambda: model()(tokens, counts, {"task"}),
        "covariates": lambda: model(n_targets=1, covariate_cardinalities=(2,))(tokens, counts, {"task"}),
        "positions": lambda: model()(torch.ones(1, 2, SEQ_LEN + 1, dtype=torch.int64), counts, {"sample_embedding"}),
    }
    for message, call in calls.items():
        with pytest.raises(ValueError, match=message) as caught:
            call()
        assert not isinstance(caught.value, AamInputError), message
