"""The device's measured peak: a dense matrix product in the run's precision, timed once per
machine and cached, the denominator of model-FLOPs utilisation (MFU).

The peak is measured, not taken from a data sheet: a square ``n x n`` product (n = 4096 on a GPU,
1024 on a CPU, with this process's thread count), the best of repeated timings. It is cached in
``~/.cache/aam-ds/device_peak.json`` keyed by device name, precision, torch version and (CPU)
thread count, so a run pays the ~1 s measurement once per machine (later runs spend ~0.1 s checking
it and keep the highest rate seen: on a machine shared with other jobs the first one can be low). ``AAM_DS_PEAK_CACHE`` points
the cache elsewhere.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from aam_ds.io_utils import atomic_write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEASURE_S = 0.5  # timing budget of a first measurement (after a warm-up product)
RECHECK_S = 0.1  # timing budget of the check each later run makes (the cache keeps the highest rate seen)


def cache_path() -> Path:
    """Where measured peaks are kept (``$AAM_DS_PEAK_CACHE`` or ``~/.cache/aam-ds/device_peak.json``)."""
    return Path(os.environ.get("AAM_DS_PEAK_CACHE", "~/.cache/aam-ds/device_peak.json")).expanduser()


def device_name(device: torch.device) -> str:
    """A name of the device that tells machines apart: the GPU's name, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def measure_matmul_flops(device: torch.device, precision: str, n: int | None = None, seconds: float = MEASURE_S) -> float:
    """FLOP/s of the best of repeated ``n x n`` products (2 n^3 FLOPs each) in ``precision``
    ('fp32', 'bf16', 'fp16') on ``device``, timed for about ``seconds``."""
    n = n or (4096 if device.type == "cuda" else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(DTYPES[precision])
    b = torch.randn(n, n, device=device, generator=gen).to(DTYPES[precision])
    torch.mm(a, b)  # warm-up: kernels chosen, caches filled
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2.0 * n**3 / best


def peak_flops(device: torch.device, precision: str) -> float:
    """The device's dense matmul FLOP/s in ``precision`` (:func:`measure_matmul_flops`): measured for
    ``MEASURE_S`` the first time on this machine, then checked for ``RECHECK_S`` by each later call; the
    cache keeps the highest rate seen, so a first measurement slowed by other jobs is corrected later."""
    key = f"{device_name(device)} | {precision} | torch {torch.__version__}"
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    known = float(cached[key]) if isinstance(cached.get(key), (int, float)) and cached[key] > 0 else 0.0
    value = max(known, measure_matmul_flops(device, precision, seconds=MEASURE_S if not known else RECHECK_S))
    if value == known:
        return value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**cached, key: value})
    except OSError:  # a read-only home: measure again next time
        pass
    return value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
