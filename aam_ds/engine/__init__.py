"""The DeepSpeed training engine (module map in docs/architecture.md).

Importing it picks DeepSpeed's CPU accelerator up front when torch sees no CUDA / ROCm device and
``DS_ACCELERATOR`` is unset: DeepSpeed would pick the CPU too, but only after printing a detection
warning in every process. A user's own ``DS_ACCELERATOR`` (e.g. ``xpu``, ``npu``) is left alone.
"""

import os


def default_to_cpu_accelerator() -> None:
    """Set ``DS_ACCELERATOR=cpu`` for this process (and its children) when there is no GPU and it is unset."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


default_to_cpu_accelerator()
