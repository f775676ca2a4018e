"""Losses, BERT masking and the target normaliser, checked against direct formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from aam_ds.errors import AamInputError
from aam_ds.export import model_config
from aam_ds.model.aam import AAMModel
from aam_ds.model.losses import (
    abundance_loss,
    classification_loss,
    embedding_distances,
    inverse_frequency_weights,
    masked_nucleotide_accuracy,
    masked_nucleotide_loss,
    pairwise_distance_loss,
    regression_loss,
)
from aam_ds.model.masking import IGNORE_INDEX, mask_nucleotides
from aam_ds.model.normalization import TargetNormalizer
from aam_ds.model.vocabulary import MASK, PAD, A, C, G, N, T
from aam_ds.spec import ModelSpec

# ---------------------------------------------------------------------------------------------
# pairwise distance loss


def random_distances(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(b, b, generator=g, dtype=torch.float64)
    t = (t + t.T) / 2
    return t.fill_diagonal_(0)


def test_pairwise_loss_is_the_mean_over_pairs_i_lt_j_of_squared_distance_errors():
    e = torch.randn(6, 5, dtype=torch.float64)
    t = random_distances(6)
    pairs = list(itertools.combinations(range(6), 2))
    expected = sum((math.dist(e[i].tolist(), e[j].tolist()) - t[i, j].item()) ** 2 for i, j in pairs) / len(pairs)
    assert pairwise_distance_loss(e, t).item() == pytest.approx(expected, rel=1e-12)


def test_pairwise_loss_gradient_matches_finite_differences():
    e = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = random_distances(5)
    assert torch.autograd.gradcheck(lambda x: pairwise_distance_loss(x, t), (e,))


def test_coincident_embeddings_give_exact_zero_distance_and_a_finite_unbiased_gradient():
    e = torch.randn(4, 3, dtype=torch.float64)
    e[1] = e[0]
    t = random_distances(4)
    assert embedding_distances(e)[0, 1] == 0  # no epsilon added under the square root
    e.requires_grad_(True)
    pairwise_distance_loss(e, t).backward()
    # reference: the same sum without the coincident pair (its subgradient is 0), same 1 / n_pairs factor
    x = e.detach().clone().requires_grad_(True)
    others = [(i, j) for i, j in itertools.combinations(range(4), 2) if (i, j) != (0, 1)]
    ref = sum((torch.linalg.vector_norm(x[i] - x[j]) - t[i, j]) ** 2 for i, j in others) / 6
    ref.backward()
    assert torch.isfinite(e.grad).all()
    torch.testing.assert_close(e.grad, x.grad, rtol=1e-12, atol=1e-12)


def test_pairwise_loss_can_reach_distances_far_beyond_one():
    """No squashing: free embeddings fit targets spanning 0..20 (a tanh / sigmoid head could not)."""
    torch.manual_seed(0)
    points = torch.randn(10, 3) * 7
    target = torch.cdist(points, points)
    e = torch.randn(10, 8, requires_grad=True)
    opt = torch.optim.Adam([e], lr=0.1)
    for _ in range(1500):
        opt.zero_grad()
        loss = pairwise_distance_loss(e, target)
        loss.backward()
        opt.step()
    assert target.max() > 15
    assert loss.item() < 1e-2 * target.pow(2).mean().item()


def test_pairwise_loss_refuses_mismatched_shapes():
    """Internal contract violations: ValueError with its traceback, not a one-line AamInputError."""
    for embeddings, target, message in (
        (torch.randn(4, 3), torch.zeros(3, 3), "do not match"),
        (torch.randn(1, 3), torch.zeros(1, 1), "at least 2"),
    ):
        with pytest.raises(ValueError, match=message) as caught:
            pairwise_distance_loss(embeddings, target)
        assert not isinstance(caught.value, AamInputError)


# ---------------------------------------------------------------------------------------------
# masking


def test_masking_is_80_10_10_on_nucleotides_only_and_reproducible():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(A, T + 1, (400, 250), generator=g)
    tokens[:, 200:] = PAD
    tokens[::7, 10] = N
    masked, labels = mask_nucleotides(tokens, 0.15, torch.Generator().manual_seed(0))

    selected = labels != IGNORE_INDEX
    nucleotide = (tokens >= A) & (tokens <= T)
    assert not selected[~nucleotide].any()  # PAD and N never selected
    assert (masked[~selected] == tokens[~selected]).all()
    assert (labels[selected] == tokens[selected]).all()
    frac = selected.sum().item() / nucleotide.sum().item()
    assert frac == pytest.approx(0.15, abs=0.005)

    n = selected.sum().item()  # ~11,000 selected positions: binomial sd of a 10 % share ~0.3 %
    to_mask = (masked[selected] == MASK).sum().item() / n
    changed = ((masked[selected] != MASK) & (masked[selected] != tokens[selected])).sum().item() / n
    kept = (masked[selected] == tokens[selected]).sum().item() / n
    assert to_mask == pytest.approx(0.80, abs=0.015)
    # 10 % random bases drawn from A/C/G/T (a quarter of them equal the original) + 10 % kept
    assert changed == pytest.approx(0.10 * 0.75, abs=0.01)
    assert kept == pytest.approx(0.10 + 0.10 * 0.25, abs=0.01)
    replaced = masked[selected & (masked != MASK) & (masked != tokens)]
    assert set(replaced.unique().tolist()) == {A, C, G, T}

    again, again_labels = mask_nucleotides(tokens, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(again, masked) and torch.equal(again_labels, labels)
    other, _ = mask_nucleotides(tokens, 0.15, torch.Generator().manual_seed(1))
    assert not torch.equal(other, masked)


# ---------------------------------------------------------------------------------------------
# nucleotide, abundance and task losses


def test_masked_nucleotide_loss_counts_masked_positions_only():
    logits = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    labels = torch.full((2, 3, 5), IGNORE_INDEX)
    labels[0, 1, 2], labels[1, 0, 4], labels[1, 2, 0] = C, G, T
    positions = [(0, 1, 2), (1, 0, 4), (1, 2, 0)]
    expected = -np.mean([torch.log_softmax(logits[p], -1)[labels[p]].item() for p in positions])
    assert masked_nucleotide_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    best = logits.argmax(-1)
    assert masked_nucleotide_accuracy(logits, labels).item() == pytest.approx(
        np.mean([best[p].item() == labels[p].item() for p in positions])
    )


def test_masked_nucleotide_loss_without_masked_positions_is_zero_not_nan():
    logits = torch.randn(1, 2, 4, 7, requires_grad=True)
    loss = masked_nucleotide_loss(logits, torch.full((1, 2, 4), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


def test_abundance_loss_uses_log_relative_abundance_of_present_asvs():
    counts = torch.tensor([[30.0, 10.0, 0.0], [5.0, 0.0, 0.0]])
    predicted = torch.tensor([[-0.5, -1.0, 99.0], [0.2, 99.0, 99.0]])
    expected = np.mean([(-0.5 - math.log(0.75)) ** 2, (-1.0 - math.log(0.25)) ** 2, (0.2 - 0.0) ** 2])
    assert abundance_loss(predicted, counts).item() == pytest.approx(expected, rel=1e-6)


def test_regression_losses_match_their_formulas():
    p = torch.tensor([[0.0, 3.0], [1.5, -0.2]])
    y = torch.tensor([[0.5, 0.0], [1.0, 0.0]])
    err = (p - y).abs().flatten().tolist()
    huber = np.mean([0.5 * e * e if e <= 1 else e - 0.5 for e in err])
    assert regression_loss(p, y, "huber").item() == pytest.approx(huber)
    assert regression_loss(p, y, "mse").item() == pytest.approx(np.mean(np.square(err)))
    assert regression_loss(p, y, "mae").item() == pytest.approx(np.mean(err))


def test_class_weights_are_inverse_frequency_and_weight_the_cross_entropy():
    labels = torch.tensor([0, 0, 0, 1])
    weights = inverse_frequency_weights(labels, 3)
    torch.testing.assert_close(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))
    logits = torch.randn(4, 3, dtype=torch.float64)
    nll = [-torch.log_softmax(logits[i], -1)[labels[i]].item() for i in range(4)]
    w = [weights[k].item() for k in labels.tolist()]
    expected = sum(wi * li for wi, li in zip(w, nll)) / sum(w)
    assert classification_loss(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, labels).item() == pytest.approx(np.mean(nll), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# target normaliser


def test_normaliser_fits_training_targets_and_round_trips():
    train = torch.tensor([[20.0, 1.0], [40.0, 1.0], [60.0, 1.0]])
    norm = TargetNormalizer(2).fit(train)
    np.testing.assert_allclose(norm.mean.numpy(), [40.0, 1.0])
    np.testing.assert_allclose(norm.std.numpy(), [np.std([20, 40, 60]), 1.0], rtol=1e-6)  # constant column keeps std 1
    z = norm.transform(train)
    np.testing.assert_allclose(z[:, 0].numpy(), [-1.2247449, 0.0, 1.2247449], rtol=1e-5)
    torch.testing.assert_close(norm.inverse(z), train)


def test_normaliser_travels_in_the_model_state_dict():
    spec = model_config(ModelSpec(preset="tiny"))
    trained = AAMModel(spec, 16, n_targets=1)
    trained.target_normalizer.fit(torch.tensor([[10.0], [30.0]]))
    fresh = AAMModel(spec, 16, n_targets=1)
    fresh.load_state_dict(trained.state_dict())
    assert bool(fresh.target_normalizer.fitted)
    assert fresh.target_normalizer.inverse(torch.tensor([[1.0]])).item() == pytest.approx(30.0)


def test_normaliser_refuses_missing_targets():
    with pytest.raises(ValueError, match="NaN"):  # an internal contract: the metadata reader refuses missing targets first
        TargetNormalizer(1).fit(torch.tensor([[1.0], [float("nan")]]), source="metadata column age")
