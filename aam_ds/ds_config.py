"""DeepSpeed configuration: generated from the run spec, or read from a user's file and reconciled.

Every value written is concrete. DeepSpeed does not resolve ``"auto"`` itself (that is the
Hugging Face integration's job): in batch fields it crashes, inside sub-configs it is silently
dropped. So ``"auto"`` never reaches DeepSpeed from here, and a user file containing it is refused.

Division of authority when a run is given ``--ds-config FILE``: the file decides ZeRO, offload,
precision and communication; the spec decides model, data and optimiser. A field that both set
(batch sizes, optimiser hyper-parameters, clipping, precision, ZeRO stage, offload) must agree;
all disagreements are reported together in one error.

A file written by ``aam-ds ds-config`` (:func:`pinned_ds_config`) pins only the batch, optimiser
and precision fields that the spec it was generated from sets explicitly; fields left at their
defaults are omitted, so the checked-in ``ds_configs/*.json`` decide ZeRO, offload and
communication and serve any run spec's batch sizes, optimiser and precision.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aam_ds.errors import AamInputError
from aam_ds.io_utils import atomic_write_text
from aam_ds.spec import RunSpec, build_spec

# Steps between DeepSpeed's own log lines: our tracker reports progress, so keep DeepSpeed quiet.
_DS_STEPS_PER_PRINT = 1_000_000


def _offload_section(device: str, nvme_path: Path | None) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": True}
    if device == "nvme":
        section["nvme_path"] = str(nvme_path)
    return section


def _zero_section(spec: RunSpec) -> dict[str, Any]:
    """ZeRO settings; bucket sizes (elements) derive from the model width d as d*d (DeepSpeed's
    own recommendation for transformer layers), prefetch 0.9*d*d and persistence 10*d."""
    par, width = spec.parallel, spec.model.d_model
    zero: dict[str, Any] = {"stage": par.zero_stage}
    if par.zero_stage == 0:
        return zero
    zero.update(
        contiguous_gradients=True,
        overlap_comm=False,
        reduce_scatter=True,
        reduce_bucket_size=width * width,
    )
    if par.zero_stage in (1, 2):
        zero.update(allgather_partitions=True, allgather_bucket_size=width * width)
    if par.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=int(0.9 * width * width),
            stage3_param_persistence_threshold=10 * width,
            stage3_max_live_parameters=1_000_000_000,
            stage3_max_reuse_distance=1_000_000_000,
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if par.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload_section(par.offload_optimizer, par.nvme_path)
    if par.offload_param != "none":
        zero["offload_param"] = _offload_section(par.offload_param, par.nvme_path)
    return zero


def build_ds_config(spec: RunSpec) -> dict[str, Any]:
    """The DeepSpeed config for a spec. The global batch is left for DeepSpeed to derive from
    micro batch x accumulation x world size, so one file serves any number of ranks."""
    par, opt = spec.parallel, spec.optim
    config: dict[str, Any] = {
        **par.batch_plan().ds_config_entries(),
        "gradient_clipping": opt.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
                "torch_adam": opt.implementation == "torch",
            },
        },
        "bf16": {"enabled": par.precision == "bf16"},
        "fp16": {
            "enabled": par.precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": _zero_section(spec),
        "steps_per_print": _DS_STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
    if par.offload_optimizer != "none" and opt.implementation == "torch":
        # torch AdamW on offloaded states: no DeepSpeedCPUAdam JIT build needed.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


# spec fields (dotted) -> the top-level DeepSpeed keys that carry them
_SPEC_DECIDED_KEYS: dict[str, tuple[str, ...]] = {
    "parallel.global_batch_size": ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"),
    "parallel.micro_batch_size": ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"),
    "parallel.grad_accum_steps": ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"),
    "parallel.precision": ("bf16", "fp16"),
    "optim.grad_clip": ("gradient_clipping",),
    "optim.lr": ("optimizer",),
    "optim.betas": ("optimizer",),
    "optim.eps": ("optimizer",),
    "optim.weight_decay": ("optimizer",),
    "optim.implementation": ("optimizer",),
}


def pinned_ds_config(spec: RunSpec) -> dict[str, Any]:
    """The config ``aam-ds ds-config`` writes: :func:`build_ds_config` without the batch, precision
    and optimiser keys whose spec fields were left at their defaults (an explicitly set field pins
    its keys). Such a file can be given to any run; the run's spec fills the omitted keys."""
    config = build_ds_config(spec)
    pinned = {key for dotted, keys in _SPEC_DECIDED_KEYS.items() if _user_set_value(spec, dotted)[0] for key in keys}
    unpinned = {key for keys in _SPEC_DECIDED_KEYS.values() for key in keys} - pinned
    return {key: value for key, value in config.items() if key not in unpinned}


def write_ds_config(config: dict[str, Any], path: Path) -> None:
    """Write ``config`` as indented JSON to ``path`` (atomically)."""
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# reading and reconciling a user's file


def find_auto_values(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every ``"auto"`` value in a (nested) config."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in find_auto_values(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in find_auto_values(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(node, str) and node.strip().lower() == "auto" else []


def read_ds_config(path: Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config; AamInputError for a missing file, invalid JSON or ``"auto"`` values."""
    path = Path(path)
    if not path.is_file():
        raise AamInputError(str(path), "DeepSpeed config not found", "generate one with `aam-ds ds-config --stage N --out FILE`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AamInputError(str(path), f"not valid JSON ({exc})", "fix the JSON syntax") from exc
    if not isinstance(config, dict):
        raise AamInputError(str(path), "top level is not a JSON object", "write the config as {...}")
    autos = find_auto_values(config)
    if autos:
        raise AamInputError(
            str(path),
            f"'auto' values at {', '.join(autos)}; DeepSpeed does not resolve 'auto' (it crashes on batch fields "
            "and silently drops it inside sub-configs)",
            "replace each with a concrete value, or generate the file with `aam-ds ds-config`",
        )
    if config.get("bf16", {}).get("enabled") and config.get("fp16", {}).get("enabled"):
        raise AamInputError(str(path), "bf16 and fp16 are both enabled", "enable at most one of them")
    return config


def _file_precision(config: dict[str, Any]) -> str | None:
    """The precision a file enables; None when it has neither a bf16 nor an fp16 section."""
    if "bf16" not in config and "fp16" not in config:
        return None
    if config.get("bf16", {}).get("enabled"):
        return "bf16"
    if config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def _file_values(config: dict[str, Any]) -> dict[str, Any]:
    """Spec fields (dotted) that the DeepSpeed file sets, with the file's values."""
    zero = config.get("zero_optimization", {})
    params = config.get("optimizer", {}).get("params", {})
    values: dict[str, Any] = {
        "parallel.global_batch_size": config.get("train_batch_size"),
        "parallel.micro_batch_size": config.get("train_micro_batch_size_per_gpu"),
        "parallel.grad_accum_steps": config.get("gradient_accumulation_steps"),
        "optim.grad_clip": config.get("gradient_clipping"),
        "optim.lr": params.get("lr"),
        "optim.weight_decay": params.get("weight_decay"),
        "optim.eps": params.get("eps"),
        "optim.betas": tuple(params["betas"]) if "betas" in params else None,
        "parallel.precision": _file_precision(config),
        "parallel.zero_stage": zero.get("stage", 0),
        "parallel.offload_optimizer": zero.get("offload_optimizer", {}).get("device", "none"),
        "parallel.offload_param": zero.get("offload_param", {}).get("device", "none"),
    }
    nvme = zero.get("offload_optimizer", {}).get("nvme_path") or zero.get("offload_param", {}).get("nvme_path")
    if nvme:
        values["parallel.nvme_path"] = Path(nvme)
    return {k: v for k, v in values.items() if v is not None}


def _user_set_value(spec: RunSpec, dotted: str) -> tuple[bool, Any]:
    section_name, field = dotted.split(".")
    section = getattr(spec, section_name)
    return field in section.model_fields_set, getattr(section, field)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def resolve_ds_config(spec: RunSpec, ds_config_path: Path | None) -> tuple[RunSpec, dict[str, Any]]:
    """The spec and DeepSpeed config a run uses.

    Without a file: the spec as given and its generated config. With a file: the file's ZeRO,
    offload, precision (and any batch / optimiser values the spec leaves unset) are adopted into
    the spec, which is re-validated; every field set in both with different values is reported
    in one AamInputError. The returned config is the file's, completed by the spec's values
    for optimiser and batch fields it lacks.
    """
    if ds_config_path is None:
        return spec, build_ds_config(spec)
    config = read_ds_config(ds_config_path)
    mismatches, adopted = [], {}
    for dotted, file_value in _file_values(config).items():
        user_set, spec_value = _user_set_value(spec, dotted)
        if user_set and not _same(spec_value, file_value):
            mismatches.append(f"  {dotted}: spec says {spec_value!r}, {ds_config_path} says {file_value!r}")
        elif not user_set:
            adopted[dotted] = file_value
    if mismatches:
        raise AamInputError(
            str(ds_config_path),
            "disagrees with the run spec:\n" + "\n".join(mismatches),
            "make the two agree: drop the field from the spec (the file then decides) or change one of the values",
        )
    raw = spec.model_dump(exclude_unset=True, mode="python")
    for dotted, value in adopted.items():
        section, field = dotted.split(".")
        raw.setdefault(section, {})[field] = value
    resolved = build_spec(raw, source=f"run spec + {ds_config_path}")
    generated = build_ds_config(resolved)
    merged = {**generated, **config}
    merged["optimizer"] = config.get("optimizer", generated["optimizer"])
    return resolved, merged
