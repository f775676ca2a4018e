"""Gathered pairwise loss under real DeepSpeed engines with 2 gloo ranks on CPU.

Oracle: plain torch (no DeepSpeed, no process group) training the same small model with torch
AdamW over the whole global batch of each optimizer step (micro x ranks x accumulation samples in
one batch, every pair of it), the pairwise loss plus a per-sample loss. After 3 optimizer steps
the parameters of the 2-rank DeepSpeed run must match it to 1e-6 for ZeRO 0-3, with and without
gradient accumulation (the gradient cache of ``pairwise.gradient_cache_step``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch

from aam_ds.engine.batches import GlobalBatchSampler
from aam_ds.engine.distributed import free_port

N_SAMPLES, N_FEATURES, DIM, MICRO, STEPS, LR = 24, 5, 4, 3, 3, 2e-2
SAMPLE_WEIGHT = 0.5  # weight of the per-sample loss (stands for the masked-nucleotide loss: per micro-step)


def make_problem() -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, F]`` and the true points ``[N, 3]`` whose distances are the targets."""
    gen = torch.Generator().manual_seed(7)
    return torch.randn(N_SAMPLES, N_FEATURES, generator=gen), torch.randn(N_SAMPLES, 3, generator=gen)


def make_model() -> torch.nn.Module:
    """No bias on the output layer: distances are translation invariant, so its gradient is 0 up to
    rounding noise, which Adam would amplify to lr-sized steps of random sign."""
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, DIM, bias=False))


def pair_mse(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of embedding distances vs targets over pairs i<j."""
    i, j = torch.triu_indices(len(emb), len(emb), offset=1)
    pred = (emb[i] - emb[j]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    return (pred - target[i, j]).pow(2).mean()


def sample_loss(emb: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A per-sample loss (mean over the batch): the first embedding coordinate regressed on the first point coordinate."""
    return (emb[:, 0] - points[:, 0]).pow(2).mean()


def reference_run(accum: int, world: int) -> tuple[list[tuple[float, float]], dict[str, torch.Tensor]]:
    """One process, no DeepSpeed: one batch of world x accumulation x MICRO samples per optimizer
    step (the ranks' micro-batches of that step, concatenated), torch AdamW, same clipping;
    (pairwise, total) loss per step and the final weights."""
    features, points = make_problem()
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    batches = iter(GlobalBatchSampler(N_SAMPLES, MICRO * world, 1, 0, seed=3))
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        idx = torch.tensor([i for _ in range(accum) for i in next(batches)])
        emb = model(features[idx])
        pairwise = pair_mse(emb, torch.cdist(points[idx], points[idx]))
        loss = pairwise + SAMPLE_WEIGHT * sample_loss(emb, points[idx])
        loss.backward()
        losses.append((pairwise.item(), loss.item()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_ranks(engine, rank: int, world: int, accum: int) -> list[tuple[float, float]]:
    """STEPS optimizer steps as the trainer takes them: without accumulation the gathered loss per
    micro-step, with it the gradient cache; (pairwise, total averaged over ranks) per step."""
    from aam_ds.engine.distributed import all_reduce_mean
    from aam_ds.engine.pairwise import gathered_pairwise_loss, gradient_cache_step

    features, points = make_problem()
    batches = iter(GlobalBatchSampler(N_SAMPLES, MICRO, world, rank, seed=3))
    distances = lambda g: torch.cdist(points[g], points[g])  # noqa: E731
    losses = []
    for _ in range(STEPS):
        if accum == 1:
            idx = torch.tensor(next(batches))
            emb = engine(features[idx])
            pairwise = gathered_pairwise_loss(emb, idx, distances, pair_mse)
            loss = pairwise + SAMPLE_WEIGHT * sample_loss(emb, points[idx])
            engine.backward(loss)
            engine.step()
            parts = {"pairwise": pairwise.item(), "loss": loss.item()}
        else:
            micro_idx = [torch.tensor(next(batches)) for _ in range(accum)]

            def forward(micro: int):
                emb = engine(features[micro_idx[micro]])
                local = sample_loss(emb, points[micro_idx[micro]])
                return emb, micro_idx[micro], SAMPLE_WEIGHT * local, {"sample": local.detach()}

            parts = gradient_cache_step(engine, accum, forward, 1.0, distances, pair_mse)
        reduced = all_reduce_mean(parts, torch.device("cpu"))
        losses.append((reduced["pairwise"], reduced["loss"]))
    return losses


def _rank_main(rank: int, world: int, port: int, configs: list[tuple[int, int]], out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"
    )
    torch.set_num_threads(1)
    import deepspeed

    from aam_ds.engine.distributed import init_distributed, report_rank_failure

    with report_rank_failure(rank):
        init_distributed(timeout_s=120)
        results = {}
        for stage, accum in configs:
            config = {
                "train_micro_batch_size_per_gpu": MICRO,
                "gradient_accumulation_steps": accum,
                "gradient_clipping": 1.0,
                "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.01, "torch_adam": True}},
                "zero_optimization": {"stage": stage},
                "steps_per_print": 10**6,
            }
            model = make_model()
            engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
            losses = _train_ranks(engine, rank, world, accum)
            params = list(engine.module.parameters())
            with deepspeed.zero.GatheredParameters(params):
                state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
            results[(stage, accum)] = (losses, state)
            del engine
        if rank == 0:
            torch.save(results, out)


def _exit_like_the_entry_point(target, *args) -> None:
    """Run ``target(*args)`` and leave as ``aam_ds.engine.entry.run_stage`` does: through
    ``exit_process`` (0 after a barrier when a group is up; 1 on an exception), never through the
    C++ static destructors that abort ~5% of finished gloo processes (exit code -6)."""
    from aam_ds.engine.distributed import exit_process

    try:
        target(*args)
    except BaseException:
        import traceback

        traceback.print_exc()
        exit_process(1)
    exit_process(0)


def run_ranks(target, world: int, *args, timeout: float = 240) -> list[int]:
    """Run ``target(rank, world, port, *args)`` in ``world`` spawned processes; exit codes.

    Fails (after killing them) if any process is still running after ``timeout`` seconds.
    """
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_exit_like_the_entry_point, args=(target, r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"ranks still running after {timeout} s (collective hang)"
    return [p.exitcode for p in procs]


@pytest.mark.slow
def test_two_ranks_match_one_process_over_the_global_batch_for_every_zero_stage(tmp_path):
    """Issue 20: with accumulation too, every pair of the step's global batch (12 samples, 66 pairs)
    is used, not only the pairs within each micro-step (2 x 15)."""
    configs = [(stage, accum) for stage in (0, 1, 2, 3) for accum in (1, 2)]
    assert run_ranks(_rank_main, 2, configs, str(tmp_path / "results.pt")) == [0, 0]
    results = torch.load(tmp_path / "results.pt")
    for accum in (1, 2):
        ref_losses, ref_state = reference_run(accum, world=2)
        for stage in (0, 1, 2, 3):
            losses, state = results[(stage, accum)]
            assert losses == [pytest.approx(ref, abs=1e-6) for ref in ref_losses], f"ZeRO-{stage} accum {accum} losses"
            for name, ref in ref_state.items():
                torch.testing.assert_close(state[name], ref, atol=1e-6, rtol=0, msg=f"ZeRO-{stage} accum {accum} {name}")


def test_cross_rank_pairs_change_the_loss():
    """The loss the ranks report (all pairs of the global batch) is not the within-rank-only loss.

    This is what makes the exactness test above sensitive to a gather that lost the cross-rank
    pairs: with 2 ranks x 3 samples, 9 of the 15 pairs cross ranks.
    """
    features, points = make_problem()
    model = make_model()
    idx = torch.tensor(next(iter(GlobalBatchSampler(N_SAMPLES, MICRO * 2, 1, 0, seed=3))))
    with torch.no_grad():
        emb = model(features[idx])
        all_pairs = pair_mse(emb, torch.cdist(points[idx], points[idx]))
        halves = [slice(0, MICRO), slice(MICRO, 2 * MICRO)]
        within = sum(pair_mse(emb[h], torch.cdist(points[idx][h], points[idx][h])) for h in halves) / 2
    assert abs(all_pairs.item() - within.item()) > 1e-3 * all_pairs.item()


def test_pairs_across_micro_steps_change_the_loss():
    """The global batch of an accumulated step (2 micro-steps x 2 ranks x 3 samples) has 66 pairs;
    the micro-steps alone 2 x 15: their mean loss differs, so the exactness test above tells them apart."""
    features, points = make_problem()
    model = make_model()
    batches = iter(GlobalBatchSampler(N_SAMPLES, MICRO * 2, 1, 0, seed=3))
    micro = [torch.tensor(next(batches)) for _ in range(2)]
    with torch.no_grad():
        per_micro = sum(pair_mse(model(features[i]), torch.cdist(points[i], points[i])) for i in micro) / 2
        idx = torch.cat(micro)
        whole = pair_mse(model(features[idx]), torch.cdist(points[idx], points[idx]))
    assert abs(whole.item() - per_micro.item()) > 1e-3 * whole.item()


def test_rank_slices_concatenate_to_the_single_process_batch():
    one = iter(GlobalBatchSampler(20, 6, 1, 0, seed=5))
    ranks = [iter(GlobalBatchSampler(20, 3, 2, r, seed=5)) for r in range(2)]
    for _ in range(7):  # crosses epoch boundaries (3 global micro-batches per epoch)
        assert next(one) == next(ranks[0]) + next(ranks[1])


def test_resumed_sampler_continues_the_sequence():
    full = iter(GlobalBatchSampler(20, 3, 2, 1, seed=5))
    seq = [next(full) for _ in range(8)]
    resumed = iter(GlobalBatchSampler(20, 3, 2, 1, seed=5, start=GlobalBatchSampler(20, 3, 2, 1, seed=5).position_after(5)))
    assert [next(resumed) for _ in range(3)] == seq[5:]


@pytest.mark.parametrize("used", [0, 1, 2, 3, 5])
def test_a_new_batch_layout_continues_the_permutation_without_repeating_or_skipping(used):
    """Issue 20: the data position is kept in samples. 20 samples, 2 ranks x micro 3 (6 per global
    micro-batch) for ``used`` micro-steps, then 1 rank x micro 4: the samples of the interrupted
    epoch are each seen once (only the tail that cannot fill a global micro-batch is dropped), and
    the next epoch starts with its own full permutation."""
    old = [GlobalBatchSampler(20, 3, 2, r, seed=5) for r in range(2)]
    iters = [iter(s) for s in old]
    seen = [i for _ in range(used) for i in next(iters[0]) + next(iters[1])]
    position = old[0].position_after(used)
    assert position == old[1].position_after(used)
    assert position == ((0, 6 * used) if used < 3 else (1, 6 * (used - 3)))
    new = GlobalBatchSampler(20, 4, 1, 0, seed=5, start=position)
    it = iter(new)
    epoch_of = [position.epoch] * ((20 - position.sample) // 4)
    rest = [i for _ in epoch_of for i in next(it)]
    order = new.epoch_order(position.epoch).tolist()
    assert rest == order[position.sample : position.sample + len(rest)]
    if position.epoch == 0:
        assert not set(seen) & set(rest) and len(seen + rest) == len(set(seen + rest)) >= 20 - 3
    assert next(it) == new.epoch_order(position.epoch + 1).tolist()[:4]
    assert new.position_after(len(epoch_of) + 1) == (position.epoch + 1, 4)


def test_epoch_drops_remainder_and_covers_each_sample_once():
    sampler = GlobalBatchSampler(20, 3, 2, 0, seed=1)
    other = GlobalBatchSampler(20, 3, 2, 1, seed=1)
    it0, it1 = iter(sampler), iter(other)
    seen = [i for _ in range(sampler.micro_steps_per_epoch) for i in next(it0) + next(it1)]
    assert len(seen) == 18 and len(set(seen)) == 18


def test_both_cache_passes_see_the_same_model_outputs_and_leave_the_statistics_once_updated():
    """The gradient cache relies on pass 2 re-computing pass 1's embeddings exactly: the same
    nucleotide masking, dropout and ASV-identity dropout (re-seeded per micro-step), and pass 1
    leaving no trace in the AsvStandardizer's running statistics."""
    from test_model import make_batch, tiny

    from aam_ds.engine.objective import Objective
    from aam_ds.engine.pairwise import buffers_kept
    from aam_ds.engine.steps import seed_micro_step
    from aam_ds.export import model_config
    from aam_ds.model.aam import AAMModel
    from aam_ds.spec import LossSpec

    torch.manual_seed(0)
    model = AAMModel(model_config(tiny(dropout=0.2, asv_identity_buckets=64, asv_identity_dropout=0.3)), 24).train()
    model.mark_asvs_seen(torch.arange(64))
    tokens, counts = make_batch([3, 5, 2, 4], max_asvs=6)
    batch = {"tokens": tokens, "counts": counts, "sample_index": torch.arange(4)}
    objective = Objective(LossSpec(mask_fraction=0.3))
    assert {"sample_embedding", "nucleotide_logits"} <= objective.want
    before = {name: b.clone() for name, b in model.named_buffers()}
    with torch.no_grad(), buffers_kept(model):
        first = objective.cached_pairwise_forward(model, batch, seed_micro_step(5, 7, 1))
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    second = objective.cached_pairwise_forward(model, batch, seed_micro_step(5, 7, 1))
    assert torch.equal(first[0], second[0].detach()) and torch.equal(first[2], second[2].detach())
    assert second[0].requires_grad and first[3]["nucleotide"] == second[3]["nucleotide"]
    assert not torch.equal(model.asv_standardizer.running_mean, before["asv_standardizer.running_mean"])
    third = objective.cached_pairwise_forward(model, batch, seed_micro_step(5, 8, 1))  # another micro-step draws anew
    assert not torch.equal(third[0], second[0])
