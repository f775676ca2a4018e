"""The DeepSpeed training loop behind ``aam-ds pretrain`` / ``aam-ds finetune`` and ``launch/*.py``.

One function per stage, run on every rank::

    pretrain(spec, ds_config_path=None) -> RunResult          # pairwise + masked-nucleotide (+ abundance)
    finetune(spec, ds_config_path=None, data=None) -> RunResult  # task head on a pretrained export

Each builds a :class:`Trainer` (``Trainer.build``: config, run folder, data, model, engine, resume)
and runs it: ``train_step`` / ``evaluate`` / ``checkpoint`` per step, ``finish`` at the end. The
step pieces and the micro-batch probe are in :mod:`aam_ds.engine.steps` and the end-of-run export
helpers in :mod:`aam_ds.engine.run_export`; this module re-exports them.

Order: process group -> spec reconciled with the DeepSpeed file -> run folder (a new default one,
or refused when it holds a previous run, see :mod:`aam_ds.engine.run_folder`) -> data (rank 0
first: it fills the token cache and writes the splits) -> model -> optional micro-batch search ->
engine -> resume -> steps (log, evaluate, keep the best, checkpoint, stop early or on Ctrl-C) ->
final checkpoint and consolidated export (of the best evaluation's weights when
``schedule.best_metric`` is set).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aam_ds.data.prepare import PreparedData
from aam_ds.ds_config import resolve_ds_config
from aam_ds.engine import checkpoint as ckpt
from aam_ds.engine.batches import DataPosition
from aam_ds.engine.best import BestTracker
from aam_ds.engine.disk import check_free_space, checkpoint_bytes, engine_parameters, written_on_every_rank
from aam_ds.engine.distributed import (
    DistContext,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    check_on_main,
    init_distributed,
    mark_progress,
)
from aam_ds.engine.evaluate import evaluate as evaluate_split
from aam_ds.engine.flops import FlopTally
from aam_ds.engine.interrupt import RunInterrupted, StopRequest, stop_requests
from aam_ds.engine.memory import GIB, PeakMemory, estimate_table, with_batch_plan
from aam_ds.engine.objective import Objective
from aam_ds.engine.peak import peak_flops
from aam_ds.engine.probe_cv import attach_probe_ensemble, check_probe_ensemble
from aam_ds.engine.resume import DATA_POSITION, advance_schedule, data_position, resume_point
from aam_ds.engine.run_export import export_spec, run_files, target_description, write_split_predictions
from aam_ds.engine.run_folder import claim_run_dir
from aam_ds.engine.setup import build_model, build_objective, check_device_support, check_world_size, given_data, load_data, parameter_text
from aam_ds.engine.steps import build_engine, find_micro_batch, optimizer_step, train_batches
from aam_ds.errors import AamInputError
from aam_ds.export import EXPORT_NAME, Export, write_export
from aam_ds.io_utils import atomic_write_json
from aam_ds.model.aam import AAMModel
from aam_ds.spec import BatchPlan, ModelSpec, RunSpec
from aam_ds.tracking import check_tracking, make_logger

BEST_TAG = "best"  # checkpoint folder holding the weights of the best evaluation
STOP_FLAG = "ctrl_c"  # reduced with each step's losses: > 0 when any rank was sent Ctrl-C
EvalCallback = Callable[[int, dict[str, float]], None]
"""Called on every rank after each evaluation with (step, validation metrics); may raise to end the run."""


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


def pretrain(spec: RunSpec, ds_config_path: Path | None = None, on_evaluate: EvalCallback | None = None) -> RunResult:
    """Pretrain (pairwise distances + masked nucleotides) on every rank; writes ``<run_dir>/model.pt``.

    ``on_evaluate(step, metrics)``: called on every rank after each validation (e.g. a tuning trial's pruning).
    """
    return train(spec, ds_config_path, finetuning=False, on_evaluate=on_evaluate)


def finetune(
    spec: RunSpec, ds_config_path: Path | None = None, data: PreparedData | None = None, on_evaluate: EvalCallback | None = None
) -> RunResult:
    """Fine-tune the task head (from ``model.pretrained`` when set); writes ``<run_dir>/model.pt``
    (with ``model.probe_ensemble_folds``, the probe ensemble of :mod:`aam_ds.engine.probe_cv`).

    ``data``: already prepared data whose ``splits`` replace the spec's split (cross-validation
    folds); by default the data is prepared from ``spec.data``. ``on_evaluate``: as for :func:`pretrain`.
    """
    if spec.loss.task == "none":
        raise AamInputError("loss.task", "fine-tuning needs a task", "set loss.task=regression or classification and data.targets")
    check_probe_ensemble(spec)
    return train(spec, ds_config_path, finetuning=True, data=data, on_evaluate=on_evaluate)


def train(
    spec: RunSpec, ds_config_path: Path | None, finetuning: bool, data: PreparedData | None = None, on_evaluate: EvalCallback | None = None
) -> RunResult:
    """Build a :class:`Trainer` for this rank (``finetuning``: task head) and run it."""
    ctx = init_distributed(spec.parallel.collective_timeout_s)
    trainer = Trainer.build(ctx, spec, ds_config_path, finetuning, data)
    trainer.on_evaluate = on_evaluate
    result = trainer.run()
    if finetuning and spec.model.probe_ensemble_folds:
        attach_probe_ensemble(trainer.spec, ds_config_path, trainer.data, result.export_path, ctx)
    return result


# --------------------------------------------------------------------------------------------
# the run


class Trainer:
    """One run on this rank: :meth:`build` sets it up, :meth:`run` steps it and :meth:`finish` closes it.

    Per step (:meth:`run`): :meth:`train_step` (one optimizer step, its metrics reduced over ranks
    and logged, the non-finite-loss stop), then when due :meth:`evaluate` (validation, the best
    model's checkpoint, the early-stopping decision), then :meth:`checkpoint` (the periodic
    checkpoint, or the checkpoint and :class:`RunInterrupted` after a Ctrl-C on any rank).
    """

    def __init__(
        self,
        ctx: DistContext,
        spec: RunSpec,
        ds_config: dict[str, Any],
        plan: BatchPlan,
        finetuning: bool,
        data: PreparedData,
        model: AAMModel,
        model_args: dict[str, Any],
        model_spec: ModelSpec,
        objective: Objective,
        n_params: int,
        resume_tag: str | None = None,
        restart: tuple[int, DataPosition] | None = None,
    ):
        """Builds the engine, the best-model tracker and the batch stream, resuming from checkpoint
        ``resume_tag`` (the one every rank agreed on) when given, or at ``restart`` (a step and the
        data position) with the model's weights as they are and a fresh optimizer (see
        :func:`resume_point`); the run
        folder's files are already written."""
        self.ctx, self.spec, self.plan, self.finetuning, self.data = ctx, spec, plan, finetuning, data
        self.model, self.model_args, self.model_spec, self.objective, self.n_params = model, model_args, model_spec, objective, n_params
        self.run_dir, self.ckpt_dir = spec.tracking.run_dir, spec.checkpoint_dir()
        self.engine = build_engine(model, spec, ds_config)
        self.start_step, self.result = 0, RunResult(step=0, micro_batch_size=plan.micro_batch_size)
        self.best = BestTracker.from_spec(spec)
        self.val = data.dataset("val") if len(data.splits.get("val", [])) else None
        if self.best is not None and self.val is None:
            raise AamInputError(
                "schedule.best_metric",
                "selecting the best model needs a validation split, and it is empty",
                "set data.split.val_fraction > 0, or unset schedule.best_metric",
            )
        start = DataPosition()
        if resume_tag is not None:
            state = ckpt.load_checkpoint(self.engine, self.ckpt_dir, resume_tag)
            self.start_step = state["step"]
            start = data_position(
                state, self.start_step * plan.grad_accum_steps, len(data.splits["train"]), plan.micro_batch_size * plan.world_size
            )
            if self.best is not None:
                self.best.restore(state)
        elif restart is not None:
            self.start_step, start = restart
            advance_schedule(self.engine, self.start_step)
        self.flops = FlopTally(model, objective.want)  # model FLOPs of the batches taken, for MFU
        self.sampler, batches = train_batches(data, spec, ctx, plan.micro_batch_size, start)
        self.batches = self.flops.count(batches)
        self.peak_flops = peak_flops(ctx.device, spec.parallel.precision)  # measured once per machine (cached)
        self.steps_per_epoch = max(1, len(data.splits["train"]) // plan.global_batch_size)
        # steps done, consecutive non-finite losses, whether any rank was sent Ctrl-C before the last step's reduction
        self.done, self.nonfinite, self.stop_requested = self.start_step, 0, False
        self.nonfinite_total = 0  # steps of this process whose loss was not finite (logged as nonfinite_steps)
        self.log: Any = None  # the run's logger and Ctrl-C request, set by run()
        self.ctrl_c: StopRequest | None = None
        self.meter, self.window_start, self.window = PeakMemory(ctx.device), 0.0, 0  # throughput window since the last log line
        self.on_evaluate: EvalCallback | None = None  # see pretrain()
        self.scatter: Any = None  # the last validation's (predicted, true) distances, for the tracked plot

    @classmethod
    def build(
        cls, ctx: DistContext, spec: RunSpec, ds_config_path: Path | None, finetuning: bool, data: PreparedData | None = None
    ) -> Trainer:
        """Spec reconciled with the DeepSpeed file -> run folder -> data -> model -> optional micro-batch
        search -> resume layout check -> free disk space check -> spec.json / ds_config.json -> engine and resume (:meth:`__init__`)."""
        spec, ds_config = resolve_ds_config(spec, ds_config_path)
        plan = check_world_size(spec, ctx.world_size)  # the batch plan, fixed from here on
        check_device_support(spec, ctx.device)
        check_on_main(ctx, lambda: check_tracking(spec))  # an unreachable MLflow server fails here, before any compute
        spec = claim_run_dir(spec, "finetune" if finetuning else "pretrain", ctx)
        run_dir, ckpt_dir = spec.tracking.run_dir, spec.checkpoint_dir()
        data = load_data(spec, ctx) if data is None else given_data(data, run_dir, ctx)
        model, model_args, model_spec = build_model(spec, data, finetuning)
        objective = build_objective(spec, data, ctx.device, model)
        if spec.parallel.max_memory_gb:
            plan = find_micro_batch(spec, ds_config, plan, data, lambda: build_model(spec, data, finetuning)[0], objective, ctx)
            spec, ds_config = with_batch_plan(spec, ds_config, plan)
        # before anything is written: a refused resume leaves the run as it was
        resume_tag, restart = (
            resume_point(spec, ckpt_dir, ctx, model, len(data.splits["train"])) if spec.checkpoint.resume else (None, None)
        )
        n_params = sum(p.numel() for p in model.parameters())  # before the engine: ZeRO-3 partitions the parameters
        check_free_space(ckpt_dir, n_params, spec.checkpoint.keep_last)
        if ctx.is_main:
            atomic_write_json(run_dir / "spec.json", spec.model_dump(mode="json"))
            atomic_write_json(run_dir / "ds_config.json", ds_config)
        return cls(ctx, spec, ds_config, plan, finetuning, data, model, model_args, model_spec, objective, n_params, resume_tag, restart)

    def run(self) -> RunResult:
        """Steps from the resumed step to ``schedule.steps`` (or an early stop), then :meth:`finish`."""
        sched, par, ctx = self.spec.schedule, self.spec.parallel, self.ctx
        with make_logger(self.spec, ctx.rank, self.run_dir) as self.log:
            self.log.start(
                self.spec,
                sched.steps,
                {
                    "world size": ctx.world_size,
                    "parameters": parameter_text(self.model),
                    "micro batch": self.plan.micro_batch_size,
                    "stage": "finetune" if self.finetuning else "pretrain",
                    "run folder": str(self.run_dir),
                    "data": self.data.origin,
                    "samples": self.data.sample_accounting(),
                    **({"validation": self.data.validation} if self.data.validation else {}),
                    **({"resumed at step": self.start_step} if self.start_step else {}),
                },
            )
            self.log.print(
                estimate_table(
                    self.n_params,
                    ctx.world_size,
                    par.precision,
                    par.zero_stage,
                    par.offload_optimizer != "none",
                    par.offload_param != "none",
                )
            )
            self.window_start, self.window = time.perf_counter(), 0
            with stop_requests() as self.ctrl_c:
                for step in range(self.start_step, sched.steps):
                    self.train_step(step)
                    done = self.done
                    if self.val is not None and (done % sched.eval_every == 0 or done == sched.steps) and self.evaluate(done):
                        break
                    self.checkpoint(done)
            return self.finish()

    def train_step(self, step: int) -> dict[str, float]:
        """Optimizer step ``step``: its loss components averaged over ranks (with whether any rank was
        sent Ctrl-C, kept in ``stop_requested``), logged every ``schedule.log_every`` steps with the
        throughput, the peak memory, the model-FLOPs utilisation ``mfu`` (:mod:`aam_ds.engine.flops` over
        :mod:`aam_ds.engine.peak`, the mean over ranks) and the learning rate (and, once any occurred, ``nonfinite_steps``:
        steps of this process with a non-finite loss, ``skipped_steps``: DeepSpeed's overflow skips);
        logs the step and raises :func:`nonfinite_loss_error` after ``schedule.max_nonfinite_steps``
        consecutive non-finite losses."""
        sched, ctx = self.spec.schedule, self.ctx
        mark_progress(step + 1)
        parts = optimizer_step(self.engine, self.batches, self.objective, ctx, self.spec, step)
        requested = self.ctrl_c is not None and self.ctrl_c.requested
        metrics = all_reduce_mean({**parts, STOP_FLAG: float(requested)}, ctx.device)  # any rank's Ctrl-C stops all
        self.stop_requested = metrics.pop(STOP_FLAG) > 0
        self.result.train_losses.append(metrics["loss"])
        self.window += 1
        self.done = done = step + 1
        finite = math.isfinite(metrics["loss"])
        self.nonfinite = 0 if finite else self.nonfinite + 1
        self.nonfinite_total += not finite
        skipped = int(getattr(self.engine, "skipped_steps", 0) or 0)  # DeepSpeed's fp16 overflow skips
        if self.nonfinite_total or skipped:
            metrics.update(nonfinite_steps=float(self.nonfinite_total), skipped_steps=float(skipped))
        stop = sched.max_nonfinite_steps and self.nonfinite >= sched.max_nonfinite_steps
        if stop or done % sched.log_every == 0 or done == sched.steps:
            elapsed = time.perf_counter() - self.window_start
            rate = self.plan.global_batch_size * self.window / elapsed
            metrics["peak_memory_gib"] = all_reduce_max(self.meter.peak_bytes(), ctx.device) / GIB
            metrics["mfu"] = all_reduce_mean({"mfu": self.flops.take().model / (elapsed * self.peak_flops)}, ctx.device)["mfu"]
            self.log.log_train(done, step // self.steps_per_epoch, metrics, rate, self.engine.get_lr()[0])
            self.window_start, self.window = time.perf_counter(), 0
        if stop:
            raise nonfinite_loss_error(done, self.nonfinite, metrics, self.ckpt_dir)
        return metrics

    def evaluate(self, step: int) -> bool:
        """Validation after ``step`` (logged; kept as the run's eval metrics); with ``schedule.best_metric``
        the best evaluation's weights go to the checkpoint folder ``best``. True when early stopping
        ends the run here (patience exhausted on any rank, before the last step)."""
        result, best = self.result, self.best
        result.eval_metrics, self.scatter = evaluate_split(self.engine, self.val, self.objective, self.ctx, self.plan.micro_batch_size)
        self.log.log_eval(step, result.eval_metrics, self.scatter)
        if self.on_evaluate is not None:
            self.on_evaluate(step, result.eval_metrics)
        if best is not None and best.update(step, result.eval_metrics):
            save_best(self.engine, self.ckpt_dir, step)
        if best is not None and step < self.spec.schedule.steps and all_reduce_max(float(best.exhausted), self.ctx.device) > 0:
            result.stopped_early = True
            self.log.print(
                f"early stopping at step {step}: val {best.metric} has not improved on step {best.step}'s "
                f"{best.value:.4g} for {best.evals_since_best} evaluations"
            )
            return True
        return False

    def checkpoint(self, step: int) -> None:
        """After a Ctrl-C (any rank), a checkpoint of ``step`` and :class:`RunInterrupted`; otherwise the
        periodic ``checkpoint.every_steps`` checkpoint. Neither after the last step (:meth:`finish` saves it)."""
        last, every = self.spec.schedule.steps, self.spec.checkpoint.every_steps
        if self.stop_requested and step < last:  # after the last step the run finishes instead
            self.save(step)
            raise RunInterrupted(
                f"stopped after step {step} with a checkpoint in {self.ckpt_dir}; continue with "
                f"--resume --set tracking.run_dir={self.run_dir}"
            )
        if every and step % every == 0 and step != last:
            self.save(step)

    def save(self, step: int) -> str:
        """A resumable checkpoint of ``step`` with the best-model tracker's state (collective); its tag."""
        position = self.sampler.position_after((step - self.start_step) * self.plan.grad_accum_steps)
        return save_progress(self.engine, self.spec, self.ckpt_dir, step, self.best, self.ctx.world_size, position)

    def finish(self) -> RunResult:
        """Final checkpoint, consolidated export ``<run_dir>/model.pt`` (of the best evaluation's weights
        when ``schedule.best_metric`` picked one other than the last step), fine-tuning's split
        predictions (rank 0), the logger's summary; the result."""
        result, best, done = self.result, self.best, self.done
        result.step = done
        tag, export_step = self.save(done), done
        if best is not None and best.step and best.step != done:
            self.engine.load_checkpoint(str(self.ckpt_dir), tag=BEST_TAG)  # every rank: ZeRO-0 exports the module's own weights
            tag, export_step = BEST_TAG, best.step
        if best is not None and best.step:
            result.best_step, result.eval_metrics = best.step, best.metrics
        state_dict = ckpt.consolidated_state_dict(self.engine, self.ckpt_dir, tag)
        result.export_path = self.run_dir / EXPORT_NAME
        if self.ctx.is_main:
            export = Export(
                state_dict,
                export_spec(self.spec, self.model_spec),
                self.model_args,
                target_description(self.data, self.model, self.finetuning),
                export_step,
            )
            write_export(result.export_path, export)
            self.log.print(f"consolidated model (step {export_step}) written to {result.export_path}")
            predictions = (
                write_split_predictions(export, self.data, self.run_dir, self.plan.micro_batch_size, self.ctx.device)
                if self.finetuning
                else {}
            )
            if self.log.keeps_files:  # W&B / MLflow: the run's files and evaluation reports
                for folder, paths in run_files(self.run_dir, self.data, predictions, self.scatter).items():
                    self.log.log_artifacts(paths, folder)
        barrier()
        val = f"val ({self.data.validation})" if self.data.validation else "val"
        summary = {f"{val} {name}": value for name, value in result.eval_metrics.items()}
        if result.train_losses:
            summary["train loss"] = result.train_losses[-1]
        summary.update({"last step": done, "exported step": export_step, "stopped early": float(result.stopped_early)})
        self.log.finish(summary)
        return result


def nonfinite_loss_error(step: int, count: int, metrics: dict[str, float], ckpt_dir: Path) -> AamInputError:
    """The error that stops a run whose loss stayed NaN / infinite (``schedule.max_nonfinite_steps``)."""
    terms = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items() if name != "loss")
    last = ckpt.latest_tag(ckpt_dir)
    return AamInputError(
        "schedule.max_nonfinite_steps",
        f"the loss was not finite for {count} consecutive steps, up to step {step} ({terms})",
        "lower optim.lr (or raise schedule.warmup_steps), check the data for extreme values, or use fp32/bf16 instead of "
        "fp16; " + (f"the last checkpoint is {ckpt_dir / last}" if last else "no checkpoint was written before it"),
    )


def save_progress(
    engine: Any, spec: RunSpec, ckpt_dir: Path, step: int, best: BestTracker | None, world_size: int, position: DataPosition
) -> str:
    """A resumable checkpoint of ``step`` (collective), with the best-model tracker's state and the
    data position in samples; returns its tag."""
    state = {**(best.state() if best else {}), DATA_POSITION: list(position)}
    return ckpt.save_checkpoint(engine, ckpt_dir, step, state, spec.checkpoint.keep_last, ckpt.checkpoint_layout(spec, world_size))


def save_best(engine: Any, ckpt_dir: Path, step: int) -> None:
    """Overwrite ``<ckpt_dir>/best`` with the current state (collective: every rank writes its shard)."""
    written_on_every_rank(
        lambda: engine.save_checkpoint(str(ckpt_dir), tag=BEST_TAG, client_state={"step": step}, save_latest=False),
        ckpt_dir / BEST_TAG,
        checkpoint_bytes(engine_parameters(engine)),
        "free disk space, or set checkpoint.dir to a larger file system",
        collective=True,
    )
