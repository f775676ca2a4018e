"""The DeepSpeed training loop behind ``aam-ds pretrain`` / ``aam-ds finetune`` and ``launch/*.py``.

One function per stage, run on every rank::

    pretrain(spec, ds_config_path=None) -> RunResult          # pairwise + masked-nucleotide (+ abundance)
    finetune(spec, ds_config_path=None, data=None) -> RunResult  # task head on a pretrained export

Order: process group -> spec reconciled with the DeepSpeed file -> run folder (a new default one,
or refused when it holds a previous run, see :mod:`aam_ds.engine.run_folder`) -> data (rank 0
first: it fills the token cache and writes the splits) -> model -> optional micro-batch search ->
engine -> resume -> steps (log, evaluate, keep the best, checkpoint, stop early or on Ctrl-C) ->
final checkpoint and consolidated export (of the best evaluation's weights when
``schedule.best_metric`` is set).
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import deepspeed
import numpy as np
import torch
from torch.utils.data import DataLoader

from aam_ds.data.augment import AugmentedDataset
from aam_ds.data.dataset import collate, to_device
from aam_ds.data.prepare import PreparedData, prepare_data
from aam_ds.data.splits import save_splits
from aam_ds.ds_config import resolve_ds_config
from aam_ds.engine import checkpoint as ckpt
from aam_ds.engine.batches import GlobalBatchSampler
from aam_ds.engine.best import BestTracker
from aam_ds.engine.distributed import DistContext, all_reduce_max, all_reduce_mean, barrier, init_distributed
from aam_ds.engine.evaluate import evaluate
from aam_ds.engine.interrupt import RunInterrupted, stop_requests
from aam_ds.engine.memory import (
    GIB,
    PeakMemory,
    estimate_table,
    is_out_of_memory,
    memory_budget_gib,
    micro_batch_candidates,
    search_micro_batch,
    with_micro_batch,
)
from aam_ds.engine.objective import Objective
from aam_ds.engine.run_folder import claim_run_dir
from aam_ds.engine.schedule import scheduler_factory
from aam_ds.errors import AamInputError
from aam_ds.export import EXPORT_NAME, Export, build_exported_model, load_export, write_export
from aam_ds.io_utils import atomic_write_json
from aam_ds.model import losses
from aam_ds.model.aam import AAMModel, check_loss_compatible
from aam_ds.prediction import predict_split, write_prediction_files
from aam_ds.spec import RunSpec
from aam_ds.tracking import make_logger

BEST_TAG = "best"  # checkpoint folder holding the weights of the best evaluation
# model fields a fine-tuning run takes from its own spec (the rest of the architecture comes from the export)
RUN_TIME_MODEL_FIELDS = ("dropout", "asv_chunk_size", "activation_checkpointing", "pretrained", "freeze_encoder",
                         "freeze_sequence_encoder", "asv_identity_dropout")
STOP_FLAG = "ctrl_c"  # reduced with each step's losses: > 0 when any rank was sent Ctrl-C


@dataclass
class RunResult:
    """What a finished run reports (the same on every rank)."""

    step: int
    train_losses: list[float] = field(default_factory=list)  # total loss per optimizer step run here
    eval_metrics: dict[str, float] = field(default_factory=dict)
    export_path: Path | None = None
    micro_batch_size: int = 0
    best_step: int | None = None  # step whose weights were exported (schedule.best_metric); None = the last
    stopped_early: bool = False


def pretrain(spec: RunSpec, ds_config_path: Path | None = None) -> RunResult:
    """Pretrain (pairwise distances + masked nucleotides) on every rank; writes ``<run_dir>/model.pt``."""
    return train(spec, ds_config_path, finetuning=False)


def finetune(spec: RunSpec, ds_config_path: Path | None = None, data: PreparedData | None = None) -> RunResult:
    """Fine-tune the task head (from ``model.pretrained`` when set); writes ``<run_dir>/model.pt``.

    ``data``: already prepared data whose ``splits`` replace the spec's split (cross-validation
    folds); by default the data is prepared from ``spec.data``.
    """
    if spec.loss.task == "none":
        raise AamInputError("loss.task", "fine-tuning needs a task", "set loss.task=regression or classification and data.targets")
    return train(spec, ds_config_path, finetuning=True, data=data)


def train(spec: RunSpec, ds_config_path: Path | None, finetuning: bool, data: PreparedData | None = None) -> RunResult:
    ctx = init_distributed(spec.parallel.collective_timeout_s)
    return _train(ctx, spec, ds_config_path, finetuning, data)


# --------------------------------------------------------------------------------------------
# setup


def check_world_size(spec: RunSpec, world_size: int) -> None:
    par = spec.parallel
    if par.world_size not in (None, world_size) or par.global_batch_size != par.micro_batch_size * par.grad_accum_steps * world_size:
        raise AamInputError(
            "parallel",
            f"global_batch_size={par.global_batch_size} (micro {par.micro_batch_size} x accumulation {par.grad_accum_steps}"
            f"{f', world_size={par.world_size}' if par.world_size else ''}) does not fit the {world_size} rank(s) launched",
            f"give parallel.micro_batch_size and grad_accum_steps only, or a global batch divisible by "
            f"micro x accumulation x {world_size}; unset parallel.world_size or launch that many ranks",
        )


def check_device_support(spec: RunSpec, device: torch.device) -> None:
    if device.type == "cpu" and spec.parallel.precision == "fp16":
        raise AamInputError("parallel.precision", "fp16 is not supported by DeepSpeed on CPU", "use bf16 or fp32 on CPU")


def load_data(spec: RunSpec, ctx: DistContext) -> PreparedData:
    """Rank 0 prepares first (token cache, split files); the others then read the warm cache."""
    data = prepare_data(spec, spec.tracking.run_dir) if ctx.is_main else None
    barrier()
    return data if data is not None else prepare_data(spec, None)


def given_data(data: PreparedData, run_dir: Path, ctx: DistContext) -> PreparedData:
    """Data prepared by the caller: rank 0 saves its split ID lists under ``run_dir`` as prepare_data would."""
    if ctx.is_main:
        save_splits(run_dir, data.splits, data.table.sample_ids)
    return data


def build_model(spec: RunSpec, data: PreparedData, finetuning: bool) -> tuple[AAMModel, dict[str, Any]]:
    """The model and its constructor arguments (recorded in the export)."""
    check_loss_compatible(spec.model, spec.loss)
    n_targets = len(data.target_names) if finetuning and spec.loss.task == "regression" else 0
    n_classes = len(data.class_names or []) if finetuning and spec.loss.task == "classification" else 0
    args = {"max_seq_len": data.max_seq_len, "n_targets": n_targets, "n_classes": n_classes,
            "covariate_cardinalities": [len(c) for c in data.covariate_classes] if finetuning else []}
    model_spec = spec.model
    export = load_export(spec.model.pretrained) if spec.model.pretrained else None
    if export is not None:
        if export.model_args["max_seq_len"] < data.max_seq_len:
            raise AamInputError(str(spec.model.pretrained), f"built for {export.model_args['max_seq_len']} nucleotides, data has {data.max_seq_len}",
                                f"set data.max_seq_len={export.model_args['max_seq_len']}")
        args["max_seq_len"] = export.model_args["max_seq_len"]
        keep = {k: getattr(spec.model, k) for k in RUN_TIME_MODEL_FIELDS}
        model_spec = type(spec.model).model_validate({**export.spec["model"], **keep})
    torch.manual_seed(spec.schedule.seed)
    model = AAMModel(model_spec, **args)
    if export is not None:
        missing, unexpected = model.load_state_dict(export.state_dict, strict=False)
        foreign = unexpected + [k for k in missing if not k.startswith(("task_head.", "target_normalizer."))]
        if foreign:
            raise AamInputError(str(spec.model.pretrained), f"weights do not fit the model ({foreign[:5]})", "fine-tune with the export's model settings")
    if export is not None and (spec.model.freeze_encoder or spec.model.freeze_sequence_encoder):
        model.asv_standardizer.fixed = True  # the pretrained sequence path stays as exported, statistics included
    model.mark_asvs_seen(torch.as_tensor(data.tokens[training_asvs(data)]))
    if finetuning and spec.model.freeze_encoder:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("task_head."))
    if n_targets:
        model.target_normalizer.fit(torch.as_tensor(data.targets[data.splits["train"]]), "data.targets (training split)")
    return model, args


def training_asvs(data: PreparedData) -> np.ndarray:
    """Table columns (ASVs) present in the training split's kept rows, ``int64 [K]`` sorted."""
    rows = [data.rows[i].asv_index for i in data.splits["train"]]
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def build_objective(spec: RunSpec, data: PreparedData, device: torch.device, model: AAMModel) -> Objective:
    target = None
    if spec.loss.pairwise_weight > 0:
        from aam_ds.distances.target import build_distance_target

        target = build_distance_target(spec.data.model_copy(update={"tree": data.tree or spec.data.tree}), data.table, device)
    weights = None
    if spec.loss.task == "classification" and spec.loss.class_weights:
        train_labels = torch.as_tensor(data.targets[data.splits["train"]])
        weights = losses.inverse_frequency_weights(train_labels, len(data.class_names))
    return Objective(spec.loss, target, weights)


def build_engine(model: AAMModel, spec: RunSpec, ds_config: dict[str, Any]) -> Any:
    params = parameter_groups(model, spec.optim.lr, spec.optim.encoder_lr_scale)
    scheduler = None if "scheduler" in ds_config else scheduler_factory(spec.schedule)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config, lr_scheduler=scheduler)
    return engine


def parameter_groups(model: AAMModel, lr: float, encoder_lr_scale: float) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters; with a task head and ``encoder_lr_scale`` < 1, two optimizer groups:
    the head at ``lr``, everything else at ``lr * encoder_lr_scale`` (the schedule scales both)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if model.task_head is None or encoder_lr_scale == 1.0:
        return [p for _, p in trainable]
    head = [p for name, p in trainable if name.startswith("task_head.")]
    encoder = [p for name, p in trainable if not name.startswith("task_head.")]
    return [group for group in ({"params": head, "lr": lr}, {"params": encoder, "lr": lr * encoder_lr_scale}) if group["params"]]


def micro_step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """Seeds masking and dropout from (seed, micro-step, rank) alone, so a resumed run repeats them."""
    value = (seed * 1_000_003 + micro_step) * 1009 + rank
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def train_batches(data: PreparedData, spec: RunSpec, ctx: DistContext, micro: int, start_micro_step: int) -> Iterator[dict[str, torch.Tensor]]:
    dataset, augment = data.dataset("train"), spec.data.augment
    sampler = GlobalBatchSampler(len(dataset), micro, ctx.world_size, ctx.rank, spec.schedule.seed, start_micro_step, augment.active)
    if augment.active:
        dataset = AugmentedDataset(dataset, augment, spec.schedule.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=spec.data.num_workers,
                        pin_memory=ctx.device.type == "cuda")
    return iter(loader)


def optimizer_step(engine: Any, batches: Iterator, objective: Objective, ctx: DistContext, spec: RunSpec, step: int) -> dict[str, float]:
    """One optimizer step (``grad_accum_steps`` micro-steps); the mean loss components over micro-steps."""
    accum = spec.parallel.grad_accum_steps
    totals: dict[str, float] = {}
    for micro in range(accum):
        gen = micro_step_generator(spec.schedule.seed, step * accum + micro, ctx.rank)
        parts = objective(engine, to_device(next(batches), ctx.device), gen)
        engine.backward(parts["loss"])
        engine.step()
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value.item() / accum
    return totals


def parameter_text(model: AAMModel) -> str:
    """``"86,216 (+ 4,194,304 in the ASV identity table)"``: a step reads only its batch's rows of the table."""
    table = model.asv_identity.weight.numel() if model.asv_identity is not None else 0
    dense = sum(p.numel() for p in model.parameters()) - table
    return f"{dense:,}" + (f" (+ {table:,} in the ASV identity table)" if table else "")


# --------------------------------------------------------------------------------------------
# automatic micro batch


MEMORY_SEARCH_CAP_S = 300.0  # the micro-batch search stops probing after this long and keeps the best size so far


def find_micro_batch(spec: RunSpec, ds_config: dict[str, Any], data: PreparedData, model_factory: Any,
                     objective: Objective, ctx: DistContext) -> int:
    """Largest micro batch whose real training steps (all active losses, this ZeRO stage) stay under
    ``parallel.max_memory_gb`` per rank, among those that keep the global batch (micro x accumulation
    x ranks); every rank agrees on the worst rank's peak. Rank 0 prints each probe; the search stops
    probing after ``MEMORY_SEARCH_CAP_S`` seconds."""
    say = print if ctx.is_main else (lambda *args, **kwargs: None)
    meter = PeakMemory(ctx.device)
    per_rank = spec.parallel.global_batch_size // ctx.world_size
    lower = 2 if spec.loss.pairwise_weight > 0 else 1  # the pairwise loss needs pairs on every rank
    budget = memory_budget_gib(spec.parallel.max_memory_gb, ctx.device, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)))
    candidates = micro_batch_candidates(per_rank, lower)
    say(f"memory search: largest micro batch among {candidates} (global batch {spec.parallel.global_batch_size} kept) "
        f"within {budget:.2f} GiB per rank, 2 real steps each, at most {MEMORY_SEARCH_CAP_S:.0f} s", flush=True)
    start = time.perf_counter()

    def peak_for(micro: int) -> float | None:
        meter.reset()
        engine = None
        try:
            # no accumulation while probing: each step reaches the optimizer (whose states count), as every
            # accumulation boundary does
            probe_spec, probe_config = with_micro_batch(spec, ds_config, micro, ctx.world_size, accumulation=1)
            engine = build_engine(model_factory(), probe_spec, probe_config)
            batches = train_batches(data, probe_spec, ctx, micro, 0)
            for step in range(2):
                optimizer_step(engine, batches, objective, ctx, probe_spec, step)
            peak = meter.peak_bytes()
        except Exception as exc:  # only out-of-memory means "does not fit"
            if not is_out_of_memory(exc):
                raise
            peak = float("inf")
        finally:
            del engine
            gc.collect()
        peak = all_reduce_max(peak, ctx.device)
        say(f"memory search: micro batch {micro}: " + ("out of memory" if peak == float("inf") else
            f"peak {peak / GIB:.2f} GiB, {'fits' if peak <= budget * GIB else 'too large'}") +
            f" ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        return None if peak == float("inf") else peak

    def out_of_time() -> bool:
        return all_reduce_max(time.perf_counter() - start, ctx.device) > MEMORY_SEARCH_CAP_S

    micro = search_micro_batch(peak_for, budget * GIB, candidates, out_of_time)
    if micro == 0:
        raise AamInputError("parallel.max_memory_gb", f"even a micro batch of {lower} needs more than {budget:.2f} GiB per rank",
                            "raise the budget, use a higher ZeRO stage or offload, or a smaller model")
    say(f"memory search: micro batch {micro} x accumulation {per_rank // micro} ({time.perf_counter() - start:.0f} s"
        + (", time cap reached" if out_of_time() else "") + ")", flush=True)
    return micro


# --------------------------------------------------------------------------------------------
# the loop


def _train(ctx: DistContext, spec: RunSpec, ds_config_path: Path | None, finetuning: bool, data: PreparedData | None) -> RunResult:
    spec, ds_config = resolve_ds_config(spec, ds_config_path)
    check_world_size(spec, ctx.world_size)
    check_device_support(spec, ctx.device)
    spec = claim_run_dir(spec, "finetune" if finetuning else "pretrain", ctx)
    run_dir, ckpt_dir = spec.tracking.run_dir, spec.checkpoint_dir()
    data = load_data(spec, ctx) if data is None else given_data(data, run_dir, ctx)
    model, model_args = build_model(spec, data, finetuning)
    objective = build_objective(spec, data, ctx.device, model)
    if spec.parallel.max_memory_gb:
        micro = find_micro_batch(spec, ds_config, data, lambda: build_model(spec, data, finetuning)[0], objective, ctx)
        spec, ds_config = with_micro_batch(spec, ds_config, micro, ctx.world_size)
    if spec.checkpoint.resume:  # before anything is written: a refused resume leaves the run as it was
        ckpt.check_layout(ckpt_dir / ckpt.resumable_tag(ckpt_dir), ckpt.checkpoint_layout(spec, ctx.world_size))
    if ctx.is_main:
        atomic_write_json(run_dir / "spec.json", spec.model_dump(mode="json"))
        atomic_write_json(run_dir / "ds_config.json", ds_config)
    n_params = sum(p.numel() for p in model.parameters())
    engine = build_engine(model, spec, ds_config)

    start_step, result = 0, RunResult(step=0, micro_batch_size=spec.parallel.micro_batch_size)
    best = BestTracker.from_spec(spec)
    val = data.dataset("val") if len(data.splits.get("val", [])) else None
    if best is not None and val is None:
        raise AamInputError("schedule.best_metric", "selecting the best model needs a validation split, and it is empty",
                            "set data.split.val_fraction > 0, or unset schedule.best_metric")
    if spec.checkpoint.resume:
        state = ckpt.load_checkpoint(engine, ckpt_dir)
        start_step = state["step"]
        if best is not None:
            best.restore(state)
    par, sched = spec.parallel, spec.schedule
    batches = train_batches(data, spec, ctx, par.micro_batch_size, start_step * par.grad_accum_steps)
    steps_per_epoch = max(1, len(data.splits["train"]) // par.global_batch_size)

    with make_logger(spec, ctx.rank, run_dir) as log:
        log.start(spec, sched.steps, {"world size": ctx.world_size, "parameters": parameter_text(model), "micro batch": par.micro_batch_size,
                                      "stage": "finetune" if finetuning else "pretrain", "run folder": str(run_dir),
                                      "data": data.origin, "samples": data.sample_accounting(),
                                      "resumed at step": start_step})
        log.print(estimate_table(n_params, ctx.world_size, par.precision, par.zero_stage,
                                 par.offload_optimizer != "none", par.offload_param != "none"))
        meter, window_start, window, done, nonfinite = PeakMemory(ctx.device), time.perf_counter(), 0, start_step, 0
        with stop_requests() as ctrl_c:
            for step in range(start_step, sched.steps):
                parts = optimizer_step(engine, batches, objective, ctx, spec, step)
                metrics = all_reduce_mean({**parts, STOP_FLAG: float(ctrl_c.requested)}, ctx.device)  # any rank's Ctrl-C stops all
                stop = metrics.pop(STOP_FLAG) > 0
                result.train_losses.append(metrics["loss"])
                window += 1
                done = step + 1
                nonfinite = 0 if math.isfinite(metrics["loss"]) else nonfinite + 1
                if sched.max_nonfinite_steps and nonfinite >= sched.max_nonfinite_steps:
                    raise nonfinite_loss_error(done, nonfinite, metrics, ckpt_dir)
                if done % sched.log_every == 0 or done == sched.steps:
                    rate = par.global_batch_size * window / (time.perf_counter() - window_start)
                    metrics["peak_memory_gib"] = all_reduce_max(meter.peak_bytes(), ctx.device) / GIB
                    log.log_train(done, step // steps_per_epoch, metrics, rate, engine.get_lr()[0])
                    window_start, window = time.perf_counter(), 0
                if val is not None and (done % sched.eval_every == 0 or done == sched.steps):
                    result.eval_metrics, scatter = evaluate(engine, val, objective, ctx, par.micro_batch_size)
                    log.log_eval(done, result.eval_metrics, scatter)
                    if best is not None and best.update(done, result.eval_metrics):
                        save_best(engine, ckpt_dir, done)
                    if best is not None and done < sched.steps and all_reduce_max(float(best.exhausted), ctx.device) > 0:
                        result.stopped_early = True
                        log.print(f"early stopping at step {done}: val {best.metric} has not improved on step {best.step}'s "
                                  f"{best.value:.4g} for {best.evals_since_best} evaluations")
                        break
                if stop and done < sched.steps:  # after the last step the run finishes instead
                    save_progress(engine, spec, ckpt_dir, done, best)
                    raise RunInterrupted(f"stopped after step {done} with a checkpoint in {ckpt_dir}; continue with "
                                         f"--resume --set tracking.run_dir={run_dir}")
                if spec.checkpoint.every_steps and done % spec.checkpoint.every_steps == 0 and done != sched.steps:
                    save_progress(engine, spec, ckpt_dir, done, best)
        result.step = done
        tag = save_progress(engine, spec, ckpt_dir, done, best)
        export_step = done
        if best is not None and best.step and best.step != done:
            engine.load_checkpoint(str(ckpt_dir), tag=BEST_TAG)  # every rank: ZeRO-0 exports the module's own weights
            tag, export_step = BEST_TAG, best.step
        if best is not None and best.step:
            result.best_step, result.eval_metrics = best.step, best.metrics
        state_dict = ckpt.consolidated_state_dict(engine, ckpt_dir, tag)
        result.export_path = run_dir / EXPORT_NAME
        if ctx.is_main:
            export = Export(state_dict, export_spec(spec, model), model_args, target_description(data, model, finetuning), export_step)
            write_export(result.export_path, export)
            log.print(f"consolidated model (step {export_step}) written to {result.export_path}")
            if finetuning:
                write_split_predictions(export, data, run_dir, par.micro_batch_size, ctx.device)
        barrier()
        summary = {f"val {name}": value for name, value in result.eval_metrics.items()}
        if result.train_losses:
            summary["train loss"] = result.train_losses[-1]
        summary.update({"last step": done, "exported step": export_step, "stopped early": float(result.stopped_early)})
        log.finish(summary)
    return result


def nonfinite_loss_error(step: int, count: int, metrics: dict[str, float], ckpt_dir: Path) -> AamInputError:
    """The error that stops a run whose loss stayed NaN / infinite (``schedule.max_nonfinite_steps``)."""
    terms = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items() if name != "loss")
    last = ckpt.latest_tag(ckpt_dir)
    return AamInputError(
        "schedule.max_nonfinite_steps", f"the loss was not finite for {count} consecutive steps, up to step {step} ({terms})",
        "lower optim.lr (or raise schedule.warmup_steps), check the data for extreme values, or use fp32/bf16 instead of "
        "fp16; " + (f"the last checkpoint is {ckpt_dir / last}" if last else "no checkpoint was written before it"),
    )


def save_progress(engine: Any, spec: RunSpec, ckpt_dir: Path, step: int, best: BestTracker | None) -> str:
    """A resumable checkpoint of ``step`` (collective), with the best-model tracker's state; returns its tag."""
    world_size = spec.parallel.global_batch_size // (spec.parallel.micro_batch_size * spec.parallel.grad_accum_steps)
    return ckpt.save_checkpoint(engine, ckpt_dir, step, best.state() if best else {}, spec.checkpoint.keep_last,
                                ckpt.checkpoint_layout(spec, world_size))


def save_best(engine: Any, ckpt_dir: Path, step: int) -> None:
    """Overwrite ``<ckpt_dir>/best`` with the current state (collective: every rank writes its shard)."""
    engine.save_checkpoint(str(ckpt_dir), tag=BEST_TAG, client_state={"step": step}, save_latest=False)
    barrier()


def export_spec(spec: RunSpec, model: AAMModel) -> dict[str, Any]:
    """The run spec as JSON, with the model section the model was actually built from (a fine-tuned
    model takes its architecture from the pretrained export, not from the fine-tuning spec)."""
    return {**spec.model_dump(mode="json"), "model": model.spec.model_dump(mode="json")}


def write_split_predictions(export: Export, data: PreparedData, run_dir: Path, batch_size: int, device: torch.device) -> None:
    """``<run_dir>/predictions_<split>.tsv`` for val and test, from the consolidated weights: the
    same code path as ``aam-ds predict``, so a later predict on the export reproduces them."""
    model = build_exported_model(export)
    for split in ("val", "test"):
        if len(data.splits.get(split, [])):
            write_prediction_files(run_dir / f"predictions_{split}.tsv", predict_split(model, data, split, batch_size, device))


def target_description(data: PreparedData, model: AAMModel, finetuning: bool) -> dict[str, Any] | None:
    """What predict needs to map outputs back to metadata: names, classes, normaliser mean / std."""
    if not finetuning:
        return None
    norm = model.target_normalizer
    return {
        "target_names": data.target_names,
        "class_names": data.class_names,
        "covariate_names": data.covariate_names,
        "covariate_classes": data.covariate_classes,
        "normalizer": None if norm is None else {"mean": norm.mean.tolist(), "std": norm.std.tolist()},
    }
