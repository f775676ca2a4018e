"""Memory: a per-ZeRO-stage estimate of model-state bytes, peak measurement, micro-batch search.

Model states per parameter (bytes): fp32 training keeps weights 4 + gradients 4 + Adam moments 8;
bf16 / fp16 keep 16-bit weights 2 + gradients 2 + fp32 master weights, moments 12. ZeRO-1
partitions the optimizer part over the W ranks, ZeRO-2 the gradients too, ZeRO-3 everything.
Offloading moves the optimizer part (and with ``offload_param`` the weights) to host memory.
Activations are not included: they depend on the batch, which the search below measures.
``python -m aam_ds.engine.memory`` prints the parameter count of every model preset.

The micro-batch search's pieces that need no training live here (candidate sizes, the search
itself, the spec / DeepSpeed config for a batch plan); its probe, which runs real training steps, is
:func:`aam_ds.engine.steps.find_micro_batch` (it builds engines and steps them with the
trainer's step functions, and this module does not import them).
"""

from __future__ import annotations

import gc
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from aam_ds.spec import MODEL_PRESETS, BatchPlan, ModelSpec, RunSpec

GIB = 1024**3


@dataclass(frozen=True)
class StateBytes:
    """Model-state bytes held by one rank, on the accelerator (or CPU-only host) and offloaded to host."""

    device: float
    offloaded: float


def model_state_bytes(
    n_params: int, world_size: int, stage: int, precision: str, offload_optimizer: bool = False, offload_param: bool = False
) -> StateBytes:
    """Bytes per parameter of weights, gradients and optimiser state on the device and offloaded, for a ZeRO ``stage`` over ``world_size`` ranks (mixed precision: 2 + 2 + 12, fp32: 4 + 4 + 8)."""
    weights, grads, optim = (4, 4, 8) if precision == "fp32" else (2, 2, 12)
    shard = 1.0 / world_size
    weights_f = shard if stage >= 3 else 1.0
    grads_f = shard if stage >= 2 else 1.0
    optim_f = shard if stage >= 1 else 1.0
    on_device = {"weights": weights * weights_f, "grads": grads * grads_f, "optim": optim * optim_f}
    offloaded = 0.0
    if offload_optimizer and stage >= 1:
        offloaded += on_device.pop("optim")
    if offload_param and stage == 3:
        offloaded += on_device.pop("weights")
    return StateBytes(n_params * sum(on_device.values()), n_params * offloaded)


def estimate_table(n_params: int, world_size: int, precision: str, chosen_stage: int, offload_optimizer: bool, offload_param: bool) -> str:
    """Printable per-stage estimate for this model and world size; the chosen stage is marked."""
    lines = [f"model states per rank, {n_params:,} parameters, {world_size} rank(s), {precision} (activations extra):"]
    for stage in range(4):
        est = model_state_bytes(
            n_params, world_size, stage, precision, offload_optimizer and stage == chosen_stage, offload_param and stage == chosen_stage
        )
        mark = "  <- this run" if stage == chosen_stage else ""
        extra = f" + {est.offloaded / GIB:.3f} GiB offloaded to host" if est.offloaded else ""
        lines.append(f"  ZeRO-{stage}: {est.device / GIB:.3f} GiB{extra}{mark}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# measured peaks


def memory_budget_gib(setting: float | str, device: torch.device, local_world_size: int) -> float:
    """The per-rank budget of ``parallel.max_memory_gb``: the number itself, or for ``"auto"`` 90 % of
    the GPU's memory, or on CPU this rank's share of 80 % of the RAM available now (Linux)."""
    if setting != "auto":
        return float(setting)
    if device.type == "cuda":
        return 0.9 * torch.cuda.get_device_properties(device).total_memory / GIB
    import psutil  # a DeepSpeed dependency

    return 0.8 * psutil.virtual_memory().available / GIB / max(local_world_size, 1)


class PeakMemory:
    """Peak memory of this process between ``reset()`` and ``peak_bytes()``: CUDA allocator peak on a
    GPU, resident set size (VmHWM, reset through /proc/self/clear_refs) on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        """Start a new peak: CUDA's peak-memory statistics, or the process's peak RSS (``/proc/self/clear_refs``)."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # not Linux: ru_maxrss (a whole-process peak) is the fallback below

    def peak_bytes(self) -> float:
        """Peak bytes since :meth:`reset`: CUDA allocated memory, or the process's peak RSS (VmHWM)."""
        if self.cuda:
            return float(torch.cuda.max_memory_allocated())
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
        except OSError:
            pass
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA, host, or a message saying so)."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def micro_batch_candidates(per_rank_batch: int, lower: int) -> list[int]:
    """Micro batches that keep the per-rank batch (``micro x accumulation``) exactly: the divisors
    of ``per_rank_batch`` from ``lower`` up, ascending."""
    return [m for m in range(max(lower, 1), per_rank_batch + 1) if per_rank_batch % m == 0]


def with_batch_plan(spec: RunSpec, ds_config: dict[str, Any], plan: BatchPlan) -> tuple[RunSpec, dict[str, Any]]:
    """The spec and DeepSpeed config carrying batch plan ``plan`` (e.g. :meth:`BatchPlan.with_micro` of the
    searched micro batch); the config's ``train_batch_size`` is dropped (DeepSpeed derives it)."""
    par = spec.parallel.model_copy(update=plan.sizes())
    config = {k: v for k, v in ds_config.items() if k != "train_batch_size"}
    config.update(plan.ds_config_entries())
    return spec.model_copy(update={"parallel": par}), config


def search_micro_batch(
    peak_for: Callable[[int], float | None], budget_bytes: float, candidates: list[int], out_of_time: Callable[[], bool] = lambda: False
) -> int:
    """Largest of ``candidates`` (ascending) whose measured peak stays within ``budget_bytes``.

    ``peak_for(m)`` runs real training steps with micro batch ``m`` and returns the peak bytes, or
    None when they ran out of memory. Doubles the index from the smallest candidate until one
    fails, then bisects. When ``out_of_time()`` turns true between probes the search stops with the
    largest size that fitted so far. Returns 0 when the smallest candidate does not fit.
    """
    fits = lambda i: (peak := peak_for(candidates[i])) is not None and peak <= budget_bytes  # noqa: E731
    good, bad, i = -1, len(candidates), 0
    while i < len(candidates) and not (good >= 0 and out_of_time()):
        if not fits(i):
            bad = i
            break
        good, i = i, 2 * i + 1
    while bad - good > 1 and not out_of_time():
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return candidates[good] if good >= 0 else 0


def preset_parameter_table(max_seq_len: int = 150) -> list[tuple[str, int, int]]:
    """(preset name, parameters of the encoders and pretraining heads, entries of the ASV identity
    table) of every model preset (:func:`aam_ds.model.aam.count_parameters`)."""
    from aam_ds.export import model_config
    from aam_ds.model.aam import count_parameters

    configs = [(name, model_config(ModelSpec(preset=name))) for name in MODEL_PRESETS]
    return [(name, count_parameters(c, max_seq_len), c.asv_identity_buckets * c.d_model) for name, c in configs]


if __name__ == "__main__":
    print(f"{'preset':<8}{'d_model':>8}{'heads':>6}{'asv':>5}{'sample':>7}{'parameters':>16}{'identity table':>16}")
    for name, n, table in preset_parameter_table():
        p = MODEL_PRESETS[name]
        print(f"{name:<8}{p['d_model']:>8}{p['n_heads']:>6}{p['asv_layers']:>5}{p['sample_layers']:>7}{n:>16,}{table:>16,}")
