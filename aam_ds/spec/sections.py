"""The run spec's sections: data, model, loss, optim, schedule, parallel, tracking, checkpoint.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aam_ds.distances.registry import DEFAULT_METRIC, METRIC_NAMES, PARAMETERS, metric_name
from aam_ds.spec.batch import DEFAULT_MICRO_BATCH, BatchPlan


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


# --------------------------------------------------------------------------------------------
# data


class SplitSpec(_Section):
    """How samples are divided into train / validation / test (sample-ID lists are saved)."""

    kind: Literal["random", "stratified", "grouped"] = "random"
    column: str | None = Field(None, description="metadata column to stratify by (kind=stratified)")
    group_column: str | None = Field(None, description="metadata column whose groups never straddle splits (kind=grouped)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    folds: int = Field(5, ge=2, description="`aam-ds cv`: number of cross-validation folds drawn by kind / column / group_column")
    folds_file: Path | None = Field(
        None, description="`aam-ds cv`: folds.tsv (sample_id, fold) to use instead, e.g. from `aam-ds rf-baseline`"
    )

    @model_validator(mode="after")
    def _check(self) -> "SplitSpec":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1 so that some samples remain for training")
        if self.kind == "stratified" and not self.column:
            raise ValueError("split.kind=stratified needs split.column (the metadata column to stratify by)")
        if self.kind == "grouped" and not self.group_column:
            raise ValueError("split.kind=grouped needs split.group_column (e.g. host_subject_id)")
        return self


class AugmentSpec(_Section):
    """Training-time perturbations of each sample, redrawn every epoch (``aam_ds.data.augment``)."""

    resample_reads: bool = Field(False, description="redraw each sample's reads at the same depth every epoch, keeping its ASVs")
    asv_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="remove each of a sample's ASVs with this probability every epoch")

    @property
    def active(self) -> bool:
        return self.resample_reads or self.asv_dropout > 0


def _metric_parameter(name: str) -> Any:
    """``data.<name>``: a metric parameter's default, bounds and description, from the metric registry."""
    parameter = PARAMETERS[name]
    return Field(parameter.default, description=parameter.description, **parameter.bounds)


class DataSpec(_Section):
    """Inputs and preprocessing. With no table given the embedded demo dataset is generated."""

    table: Path | None = Field(
        None,
        description="BIOM (HDF5 v2.1 or TSV) or QIIME 2 FeatureTable[Frequency] .qza, or a folder written by `aam-ds shard` "
        "(read lazily); none = embedded demo data",
    )
    tree: Path | None = Field(None, description="rooted Newick or QIIME 2 Phylogeny[Rooted] .qza (needed for UniFrac)")
    sequences: Path | None = Field(
        None,
        description="FASTA or FeatureData[Sequence] .qza (e.g. rep-seqs.qza), needed when feature IDs are MD5 "
        "hashes; none = the IDs are the sequences",
    )
    metadata: Path | None = Field(None, description="QIIME 2 metadata TSV")
    targets: list[str] = Field(default_factory=list, description="metadata columns to predict when fine-tuning")
    covariates: list[str] = Field(default_factory=list, description="categorical metadata columns fused with the sample embedding")
    rarefy_depth: int | None = Field(None, gt=0, description="subsample every sample to this many reads; samples below it are dropped")
    rarefy_seed: int = 0
    max_asvs: int = Field(256, gt=0, description="per-sample ASV limit")
    asv_selection: Literal["abundance", "random", "first"] = "abundance"
    max_seq_len: int = Field(150, gt=0, description="nucleotides kept per ASV (longer ones are truncated)")
    ambiguous_bases: Literal["error", "as_n", "drop_asv"] = Field(
        "error", description="IUPAC codes other than ACGT: refuse, map to the N token, or drop the ASV"
    )
    cache_dir: Path = Field(Path("~/.cache/aam-ds"), description="where tokenised sequences are cached")
    distances: str = Field("on-the-fly", description="'on-the-fly' or a precomputed matrix (unifrac HDF5, .npy, square TSV)")
    metric: Literal[METRIC_NAMES] = Field(DEFAULT_METRIC, description="distance between samples (aam_ds/distances/registry.py)")  # type: ignore[valid-type]
    alpha: float = _metric_parameter("alpha")
    pseudocount: float = _metric_parameter("pseudocount")
    drop_missing_tips: bool = Field(False, description="drop ASVs absent from the tree (with a warning) instead of failing")
    drop_samples_without_metadata: bool = Field(
        False, description="drop table samples that have no metadata row (with a warning) instead of failing"
    )
    split: SplitSpec = Field(default_factory=SplitSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    num_workers: int = Field(0, ge=0)

    @field_validator("metric", mode="before")
    @classmethod
    def _registered_metric(cls, name: Any) -> Any:
        """An alias the field uses (QIIME 2's weighted_unifrac, ...) is read as the registered name it stands for."""
        return metric_name(name, "data.metric") if isinstance(name, str) else name


# --------------------------------------------------------------------------------------------
# model

# Parameters with pretraining heads at max_seq_len 150 (`python -m aam_ds.engine.memory` prints them):
# tiny 86K (CPU tests), small 848K, base 25.8M, large 405M.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, n_heads=4, asv_layers=1, sample_layers=1, ffn_mult=2),
    "small": dict(d_model=128, n_heads=4, asv_layers=2, sample_layers=2, ffn_mult=4),
    "base": dict(d_model=512, n_heads=8, asv_layers=4, sample_layers=4, ffn_mult=4),
    "large": dict(d_model=1024, n_heads=16, asv_layers=12, sample_layers=20, ffn_mult=4),
}


class ModelSpec(_Section):
    """Nucleotide -> ASV -> sample transformer. A preset fills every field not set explicitly."""

    preset: Literal["tiny", "small", "base", "large"] | None = "small"
    d_model: int = Field(0, ge=0, description="width of both transformers")
    n_heads: int = Field(0, ge=0)
    asv_layers: int = Field(0, ge=0, description="transformer layers over the nucleotides of one ASV")
    sample_layers: int = Field(
        0,
        ge=0,
        description="transformer layers over the ASVs of one sample; 0 = a deep set (pooling without attention between ASVs)",
    )
    ffn_mult: int = Field(0, ge=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    use_abundance: bool = Field(True, description="add a log-abundance embedding to each ASV vector")
    asv_order: bool = Field(False, description="give the sample encoder ASV positions (breaks order invariance)")
    asv_chunk_size: int = Field(0, ge=0, description="ASVs encoded per chunk to bound memory; 0 = all at once")
    activation_checkpointing: bool = False
    asv_identity_buckets: int = Field(
        65536,
        ge=0,
        description="learned per-ASV vectors added to the sequence encoder's, looked up by a hash of the ASV's "
        "nucleotides into this many buckets (ASVs unseen in training use the sequence encoder alone); 0 = off",
    )
    asv_identity_dropout: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="training: drop each ASV's learned vector with this probability, so the sequence encoder also "
        "learns to place ASVs (it is what serves ASVs unseen in training)",
    )
    pretrained: Path | None = Field(None, description="consolidated export to start from (fine-tuning)")
    freeze_encoder: bool = Field(False, description="fine-tuning: train the task head only")
    freeze_sequence_encoder: bool = Field(
        False,
        description="fine-tuning: keep the nucleotide encoder fixed and run it without gradients (about 3x "
        "cheaper); the ASV vectors, sample encoder and task head still train",
    )
    probe_ensemble_folds: int = Field(
        0,
        ge=0,
        le=20,
        description="fine-tuning from model.pretrained: 0 = off; k >= 2 = also fit a linear probe (logistic / ridge "
        "regression) on the pretrained model's frozen sample embeddings and export the weighted mean of the two "
        "models' predictions, the weight chosen by k-fold cross-validation within the training samples (k more "
        "fine-tunings, each on (k-1)/k of them)",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        preset = values.get("preset", "small")
        if preset is None:
            return values
        if preset not in MODEL_PRESETS:
            return values  # the Literal check reports it
        return {**MODEL_PRESETS[preset], **values}

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        for name in ("d_model", "n_heads", "asv_layers", "ffn_mult"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be set (> 0) when model.preset is null")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        return self


# --------------------------------------------------------------------------------------------
# loss


class LossSpec(_Section):
    """Loss weights (pretraining) and the task loss (fine-tuning). A weight of 0 turns a loss off."""

    pairwise_weight: float = Field(1.0, ge=0.0, description="embedding distances vs target distances over all pairs i<j")
    nucleotide_weight: float = Field(1.0, ge=0.0, description="masked-nucleotide cross-entropy")
    abundance_weight: float = Field(0.0, ge=0.0, description="per-ASV log relative abundance regression")
    mask_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="nucleotides selected for BERT-style 80/10/10 masking")
    mask_sample_path: bool = Field(
        False,
        description="masked-nucleotide pretraining: the sample path reads the masked copies too (each copy of an ASV "
        "masked on its own, every copy encoded; the pretraining of sessions 1-5) instead of the unmasked ASVs",
    )
    task: Literal["none", "regression", "classification"] = "none"
    task_weight: float = Field(1.0, ge=0.0)
    regression_loss: Literal["huber", "mse", "mae"] = "huber"
    class_weights: bool = Field(False, description="weight classes by inverse training frequency")


# --------------------------------------------------------------------------------------------
# optimiser and schedule


class OptimSpec(_Section):
    """Optimiser: AdamW learning rate, weight decay, betas, gradient clipping and implementation."""

    lr: float = Field(1e-3, gt=0.0, description="peak learning rate (after warmup)")
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max global gradient norm; 0 = off")
    implementation: Literal["torch", "deepspeed"] = Field(
        "torch", description="torch AdamW (no compile step) or DeepSpeed's fused / CPU Adam (JIT-built, faster)"
    )
    encoder_lr_scale: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="fine-tuning: learning rate of everything but the task head as a fraction of "
        "optim.lr (discriminative fine-tuning, Howard & Ruder 2018), so the pretrained encoder changes less than the new head",
    )


def scaled_default(steps: int, divisor: int, cap: int, floor: int) -> int:
    """A default that shrinks with a short run: ``steps // divisor`` within [floor, cap]."""
    return max(floor, min(cap, steps // divisor))


class ScheduleSpec(_Section):
    """Run length, learning-rate schedule, reporting intervals, best-model selection.

    Intervals left unset (null) scale with ``steps``: a 10-step run warms up for 1 step, logs
    every step and evaluates every 2; from 200 steps on they are 20, 10 and 50.
    """

    steps: int = Field(200, gt=0, description="optimizer steps")
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup steps; none = min(20, steps // 10)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a fraction of optim.lr")
    eval_every: int | None = Field(None, gt=0, description="validate every N steps and at the end; none = min(50, steps // 4), at least 1")
    log_every: int | None = Field(
        None, gt=0, description="report training every N steps and at the end; none = min(10, steps // 20), at least 1"
    )
    seed: int = 0
    best_metric: str | None = Field(
        None,
        description="validation metric that selects the exported model, e.g. loss, mae, accuracy, balanced_accuracy, auc; none = the last step",
    )
    best_mode: Literal["auto", "min", "max"] = Field("auto", description="auto: max for accuracy / auc / r2 / *_r metrics, else min")
    early_stopping_patience: int = Field(0, ge=0, description="stop after this many evaluations without a better best_metric; 0 = never")
    max_nonfinite_steps: int = Field(
        3,
        ge=0,
        description="stop with an error after this many consecutive steps whose loss is NaN or infinite "
        "(their updates are worthless); 0 = never",
    )

    @model_validator(mode="after")
    def _check(self) -> "ScheduleSpec":
        if self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ValueError(
                f"schedule.warmup_steps={self.warmup_steps} exceeds schedule.steps={self.steps}; "
                "lower it, or leave it unset to warm up for min(20, steps // 10) steps"
            )
        if self.early_stopping_patience and not self.best_metric:
            raise ValueError("schedule.early_stopping_patience needs schedule.best_metric (the validation metric to watch)")
        if self.warmup_steps is None:
            self.warmup_steps = scaled_default(self.steps, 10, 20, 0)
        if self.eval_every is None:
            self.eval_every = scaled_default(self.steps, 4, 50, 1)
        if self.log_every is None:
            self.log_every = scaled_default(self.steps, 20, 10, 1)
        return self


# --------------------------------------------------------------------------------------------
# parallelism and precision


class ParallelSpec(_Section):
    """Batch sizes, ZeRO, offload and precision. Give any two of the three batch sizes."""

    global_batch_size: int | None = Field(None, gt=0, description="samples per optimizer step over all ranks")
    micro_batch_size: int | None = Field(
        None, gt=0, description=f"samples per forward pass on one rank; none of the three given: {DEFAULT_MICRO_BATCH} (x 1 accumulation)"
    )
    grad_accum_steps: int | None = Field(None, gt=0, description="forward passes per optimizer step on each rank")
    world_size: int | None = Field(None, gt=0, description="ranks; default: $WORLD_SIZE or 1")
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_param: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: Path | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    collective_timeout_s: int = Field(600, gt=0, description="a rank waiting longer than this in a collective fails")
    max_memory_gb: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        None,
        description="per-rank memory budget in GiB, or 'auto' (90% of the GPU, or this rank's share of 80% of free RAM): "
        "search the largest micro batch whose real steps fit (GPU memory, or RSS on CPU)",
    )

    @model_validator(mode="after")
    def _check(self) -> "ParallelSpec":
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError(
                f"parallel.offload_param={self.offload_param} needs parallel.zero_stage=3 "
                f"(got {self.zero_stage}); use offload_optimizer with ZeRO-1/2"
            )
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("parallel.offload_optimizer needs parallel.zero_stage >= 1")
        if "nvme" in (self.offload_optimizer, self.offload_param) and self.nvme_path is None:
            raise ValueError("NVMe offload needs parallel.nvme_path (a directory on a local NVMe disk)")
        return self

    def effective_world_size(self) -> int:
        """``world_size``, or the launcher's ``WORLD_SIZE`` (1 when unset)."""
        return self.world_size or int(os.environ.get("WORLD_SIZE", "1"))

    def resolved(self) -> "ParallelSpec":
        """This section with its batch plan resolved (:meth:`BatchPlan.resolve`, run once by RunSpec's
        validation): the three batch fields hold the plan's sizes, while ``model_fields_set`` still names
        only those the user gave (a DeepSpeed file may set the others).

        Raises
        ------
        ValueError
            the sizes given cannot be met (reported by the spec as an AamInputError).
        """
        plan = BatchPlan.resolve(self.global_batch_size, self.micro_batch_size, self.grad_accum_steps, self.effective_world_size())
        return type(self).model_construct(_fields_set=set(self.model_fields_set), **{**dict(self), **plan.sizes()})

    def batch_plan(self, launched: int | None = None) -> BatchPlan:
        """The resolved batch plan; with ``launched`` (the ranks a launch got) checked against them
        (:meth:`BatchPlan.launched`, an AamInputError when it does not fit)."""
        world = self.effective_world_size() if launched is None else launched
        return BatchPlan.launched(self.global_batch_size, self.micro_batch_size, self.grad_accum_steps, self.world_size, world)


# --------------------------------------------------------------------------------------------
# tracking and checkpoints


class TrackingSpec(_Section):
    """Tracking: run folder (and overwriting it), W&B, MLflow, run names, the rich console."""

    run_dir: Path | None = Field(
        None,
        description="metrics.jsonl, splits, spec, checkpoints and the export land here; none = a new "
        "runs/<stage>-<YYYYmmdd-HHMMSS> (stage: pretrain, finetune, cv) that runs/<stage>-latest links to, "
        "or with checkpoint.resume the run runs/<stage>-latest links to",
    )
    overwrite: bool = Field(
        False,
        description="delete a previous run's outputs in run_dir (and its checkpoints) first; without it a used "
        "run_dir is refused unless checkpoint.resume continues it",
    )
    wandb: Literal["online", "offline", "disabled"] = Field("disabled", description="W&B mode on rank 0; $WANDB_MODE overrides")
    mlflow: str = Field(
        "disabled",
        description="MLflow on rank 0: disabled, local (the store runs/mlflow.db beside the run folders) or a "
        "tracking URI (http://host:5000, sqlite:///mlflow.db, databricks); checked before any compute",
    )
    project: str = Field("aam-ds", description="W&B project and MLflow experiment")
    name: str | None = Field(None, description="run name shown by the console, W&B and MLflow; none = the run folder's name in MLflow")
    rich: bool = Field(True, description="Rich progress bar on rank 0 (plain lines when false)")


class CheckpointSpec(_Section):
    """Checkpoints: folder, interval, how many to keep, resuming."""

    dir: Path | None = Field(None, description="default: <tracking.run_dir>/checkpoints")
    every_steps: int | None = Field(
        None, ge=0, description="save every N steps and at the end; 0 = only at the end; none = max(50, schedule.steps // 10)"
    )
    keep_last: int = Field(2, gt=0)
    resume: bool = Field(False, description="continue from <dir>/latest (an error when there is none)")
    on_world_size_change: Literal["error", "restart_from_weights"] = Field(
        "error",
        description="a resume with another number of ranks: refuse it (error), or continue at the checkpoint's step "
        "from its consolidated fp32 weights with the optimizer state reset (restart_from_weights)",
    )
