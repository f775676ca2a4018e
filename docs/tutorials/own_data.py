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
# # Your own data: QIIME 2 artifacts -> pretrain -> fine-tune body site -> evaluate
#
# The inputs a QIIME 2 analysis leaves you with, here those of QIIME 2's *moving pictures* tutorial
# (34 samples from four body sites of two people): a feature table whose ASV IDs are MD5 hashes
# (QIIME 2's default), a rooted tree, the representative sequences (`rep-seqs.qza`, from DADA2) and
# the sample metadata. We pretrain a tiny model on UniFrac distances and masked nucleotides,
# fine-tune it to predict `BodySite`, and evaluate the held-out predictions.
#
# Environment variables: `AAM_MP_DIR`, the folder holding `moving_pictures.table.biom`,
# `.rooted-tree.nwk` and `.sample-metadata.tsv` (default `../shared/data/small`, the project's
# data folder beside the repository); `AAM_MP_REP_SEQS`, the tutorial's `rep-seqs.qza`;
# `AAM_TUTORIAL_STEPS`, optimiser steps of each run (default 200; CI runs 4); `AAM_TUTORIAL_DIR`,
# the folder the outputs go in, under `tutorial-own-data/` (default `runs/`). **Without the rep-seqs** (as in CI, whose data folder has no sequences) the
# notebook shows the error aam-ds gives and runs the same steps on the embedded demo data instead
# (generated, 300 samples, a `body_site` column): the figures below then show the demo data.

# %%
import json
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # run as a script: figures go to files only
import biom
import h5py
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

import aam_ds as aam_ds_package
from aam_ds.cli import main as aam_ds
from aam_ds.data.metadata import load_metadata
from aam_ds.data.sequences import asv_sequences, read_fasta
from aam_ds.data.synthetic import demo_data
from aam_ds.data.table import load_table
from aam_ds.engine import trainer
from aam_ds.errors import AamInputError
from aam_ds.spec import load_spec
from aam_ds.tracking import read_metrics

os.chdir(Path(aam_ds_package.__file__).resolve().parents[1])  # the repository root (configs/, ../shared/data)
STEPS = int(os.environ.get("AAM_TUTORIAL_STEPS", "200"))
OUT = (Path(os.environ.get("AAM_TUTORIAL_DIR", "runs")) / "tutorial-own-data").resolve()
OUT.mkdir(parents=True, exist_ok=True)
MP = Path(os.environ.get("AAM_MP_DIR", "../shared/data/small"))
REP_SEQS = os.environ.get("AAM_MP_REP_SEQS")

# %% [markdown]
# ## The inputs
#
# aam-ds reads QIIME 2 artifacts directly (`.qza`: `FeatureTable[Frequency]`, `Phylogeny[Rooted]`,
# `FeatureData[Sequence]`) as well as BIOM, Newick, FASTA and QIIME 2 metadata TSV files. The feature
# IDs of this table are MD5 hashes of the ASV sequences:

# %%
table_path, tree_path = MP / "moving_pictures.table.biom", MP / "moving_pictures.rooted-tree.nwk"
metadata_path = MP / "moving_pictures.sample-metadata.tsv"
if table_path.is_file():
    table = load_table(table_path)
    print(f"{len(table.sample_ids)} samples x {len(table.asv_ids)} ASVs; first IDs: {table.asv_ids[:2]}")
    print(load_metadata(metadata_path)["BodySite"].value_counts().to_string())
else:
    print(f"{table_path} is absent: the moving pictures data is not at hand")

# %% [markdown]
# ## The ASVs' DNA
#
# AAM reads the DNA of every ASV, and a hash is not DNA: give the representative sequences keyed by
# the same IDs, `--set data.sequences=rep-seqs.qza` on the command line (or `data.sequences:` in the
# run spec). Without them aam-ds stops before training with this message:

# %%
if table_path.is_file():
    try:
        asv_sequences(table.asv_ids, None, str(table_path))
    except AamInputError as error:
        print(error)

# %% [markdown]
# The rep-seqs must hold every ASV of the table (the moving pictures tutorial's `rep-seqs.qza` lacks 2
# of the 759 ASVs of this table, which aam-ds would refuse, naming them): keep the ASVs that have a
# sequence. Without the rep-seqs we take the demo data, whose ASV IDs are the sequences themselves.

# %%
if REP_SEQS and table_path.is_file():
    records = read_fasta(REP_SEQS)
    full = biom.load_table(str(table_path))
    kept = full.filter(lambda values, asv, meta: asv in records, axis="observation", inplace=False)
    TABLE, SEQUENCES = OUT / "table-with-sequences.biom", REP_SEQS
    with h5py.File(TABLE, "w") as handle:
        kept.to_hdf5(handle, "moving pictures, ASVs with a sequence")
    TREE, METADATA, TARGET = tree_path, metadata_path, "BodySite"
    print(f"moving pictures: {kept.shape[0]} of {full.shape[0]} ASVs have a sequence in {REP_SEQS}")
else:
    demo = demo_data(Path("~/.cache/aam-ds"))
    TABLE, TREE, METADATA, SEQUENCES, TARGET = demo.table, demo.tree, demo.metadata, None, "body_site"
    print("no rep-seqs given (AAM_MP_REP_SEQS): the steps below run on the demo data (target body_site)")

# %% [markdown]
# ## Pretrain
#
# Pairwise unweighted UniFrac between sample embeddings plus masked-nucleotide prediction, on every
# sample, 10 % held out for validation; no labels are used. On the command line this is
# `aam-ds pretrain --set data.table=... --set data.tree=... --set data.sequences=rep-seqs.qza ...`
# (or `deepspeed launch/pretrain.py ...` for several GPUs); a notebook calls the same function,
# `aam_ds.engine.trainer.pretrain`, with the run spec those `--set` flags make.

# %%
settings = [f"data.table={TABLE}", f"data.tree={TREE}", "data.max_asvs=64", "data.max_seq_len=100", "model.preset=tiny",
            f"schedule.steps={STEPS}", "parallel.micro_batch_size=8", "tracking.rich=false", "tracking.overwrite=true"]
if SEQUENCES:
    settings.append(f"data.sequences={SEQUENCES}")
pretrained = OUT / "pretrain"
result = trainer.pretrain(load_spec(None, [*settings, f"tracking.run_dir={pretrained}"]))
print(f"pretrained {result.step} steps; last validation: distance r {result.eval_metrics['distance_r']:.3f}")

# %%
records = read_metrics(pretrained / "metrics.jsonl")
train = [(r["step"], r["metrics"]["pairwise"]) for r in records if r["kind"] == "train"]
evals = [(r["step"], r["metrics"]["distance_r"]) for r in records if r["kind"] == "eval"]
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(*zip(*train), marker=".")
axes[0].set(xlabel="step", ylabel="pairwise UniFrac loss", title="pretraining")
axes[1].plot(*zip(*evals), marker="o")
axes[1].set(xlabel="step", ylabel="r", title="held-out predicted vs true distance")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Fine-tune on body site
#
# `aam-ds finetune` (`trainer.finetune`) starts from the pretrained export (`model.pretrained`) and trains a
# classification head on the metadata column; a stratified split keeps 30 % of each site for
# validation. The run writes `predictions_val.tsv` (class probabilities per held-out sample).

# %%
finetuned = OUT / "finetune"
result = trainer.finetune(load_spec(None, [
    *settings, f"model.pretrained={pretrained / 'model.pt'}", f"data.metadata={METADATA}", "loss.task=classification",
    f"data.targets=[{TARGET}]", "data.split.kind=stratified", f"data.split.column={TARGET}", "data.split.val_fraction=0.3",
    f"tracking.run_dir={finetuned}"]))
print(pd.read_csv(finetuned / "predictions_val.tsv", sep="\t").head().to_string(index=False))

# %% [markdown]
# ## Evaluate
#
# `aam-ds evaluate` scores the predictions against the metadata: accuracy, balanced accuracy, AUC,
# F1 (`metrics.json`), per-sample rows, the worst samples and a confusion matrix.

# %%
evaluation = OUT / "evaluate"
assert aam_ds(["evaluate", "--predictions", str(finetuned / "predictions_val.tsv"), "--metadata", str(METADATA),
               "--target", TARGET, "--out-dir", str(evaluation)]) == 0
print(json.loads((evaluation / "metrics.json").read_text())["metrics"])
display(Image(filename=str(evaluation / "confusion_matrix.png"), width=380))
