# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quick start: pretrain on the demo data, then read what the run wrote
#
# A jupytext percent script: open it as a notebook (`jupytext --to ipynb quickstart.py`) or run it
# as a script (`python docs/tutorials/quickstart.py`). It pretrains the
# tiny model of `configs/demo.yaml` on the embedded demo dataset (300 samples, generated and
# seeded) and plots the learning curves from the run's `metrics.jsonl`.
#
# `AAM_TUTORIAL_STEPS` sets the number of optimiser steps (default 300, a few minutes on a laptop
# CPU; CI runs 4) and `AAM_TUTORIAL_DIR` the folder the run folder `tutorial-quickstart/` goes in
# (default `runs/`).

# %%
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # run as a script: figures go to files only
import matplotlib.pyplot as plt

import aam_ds
from aam_ds.tracking import read_metrics

os.chdir(Path(aam_ds.__file__).resolve().parents[1])  # the repository root (launch/, configs/)
STEPS = int(os.environ.get("AAM_TUTORIAL_STEPS", "300"))
RUN_DIR = (Path(os.environ.get("AAM_TUTORIAL_DIR", "runs")) / "tutorial-quickstart").resolve()

# %% [markdown]
# ## Pretrain
#
# The same code path as `bash scripts/quickstart.sh` (one process here; `deepspeed` or `torchrun`
# in front of the script use every GPU). `--set` overrides a field of the run spec;
# `tracking.overwrite=true` lets the tutorial be run again into the same folder.

# %%
command = [
    sys.executable, "launch/pretrain.py", "--spec", "configs/demo.yaml",
    "--set", f"schedule.steps={STEPS}", "--set", f"schedule.warmup_steps={min(10, STEPS // 2)}",
    "--set", f"schedule.log_every={max(1, min(10, STEPS // 4))}", "--set", f"tracking.run_dir={RUN_DIR}",
    "--set", "tracking.rich=false", "--set", "tracking.overwrite=true",
]
result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
print("\n".join(line for line in result.stdout.splitlines() if line.startswith(("aam-ds run", "step ", "eval ", "consolidated"))))
assert result.returncode == 0, result.stdout[-3000:]

# %% [markdown]
# ## What the run wrote
#
# - `metrics.jsonl`: one JSON record per logged training step (losses, learning rate, samples per
#   second) and per evaluation (held-out metrics, e.g. the correlation of predicted and true
#   UniFrac distances), then a summary;
# - `model.pt`: the consolidated export (fp32 weights, the run spec, the model's arguments) that
#   fine-tuning (`--set model.pretrained=...`), `aam-ds predict`, `aam-ds explain` and
#   `aam-ds export-onnx` read;
# - `checkpoints/`: DeepSpeed checkpoints for `--resume`;
# - `splits/`: the sample IDs of each split; `spec.json` / `ds_config.json`: what the run used.

# %%
for path in sorted(RUN_DIR.iterdir()):
    print(f"{path.name}{'/' if path.is_dir() else ''}")

# %% [markdown]
# ## Learning curves
#
# Training losses per logged step (`pairwise`: the UniFrac distance loss, `nucleotide`: the
# masked-nucleotide loss, `loss`: their weighted sum) and two held-out metrics of each evaluation:
# `distance_r`, the correlation of predicted and true UniFrac distances between held-out samples,
# and `nucleotide_accuracy`, the share of masked nucleotides predicted right (0.25 is chance).

# %%
records = read_metrics(RUN_DIR / "metrics.jsonl")
train = [r for r in records if r["kind"] == "train"]
evals = [r for r in records if r["kind"] == "eval"]
names = sorted({name for r in train for name in r["metrics"] if "memory" not in name})  # losses, not peak memory
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name in names:
    points = [(r["step"], r["metrics"][name]) for r in train if name in r["metrics"]]
    axes[0].plot(*zip(*points), marker=".", label=name)
axes[0].set(xlabel="step", ylabel="training loss", title="training")
axes[0].legend(fontsize=8)
for name in ("distance_r", "nucleotide_accuracy"):  # UniFrac correlation, masked-nucleotide accuracy
    points = [(r["step"], r["metrics"][name]) for r in evals if name in r["metrics"]]
    axes[1].plot(*zip(*points), marker="o", label=name)
axes[1].set(xlabel="step", title="held-out evaluation")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(RUN_DIR / "learning_curves.png", dpi=100)
print(f"{len(train)} training records, {len(evals)} evaluations; last evaluation: {evals[-1]['metrics'] if evals else None}")
