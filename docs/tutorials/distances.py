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
# # Distances: aam-ds against biocore's unifrac and scikit-bio, and what a model predicts
#
# Pretraining teaches the model that the Euclidean distance between two sample embeddings should be
# the UniFrac distance between the samples. This tutorial checks the targets first, then the
# predictions:
#
# 1. the exact distances `aam-ds distances` computes (in torch) against biocore's `ssu` (the
#    reference implementation, Debian package `unifrac-tools`) and scikit-bio, on the moving
#    pictures table and tree (`AAM_MP_DIR`, default `../shared/data/small`; the demo data when
#    that folder is absent);
# 2. a PCoA of held-out samples from the true distances beside one from the model's embedding
#    distances, after pretraining on the demo data for `AAM_TUTORIAL_STEPS` steps (default 300;
#    CI runs 4, so its figures show an untrained model). Outputs go to `$AAM_TUTORIAL_DIR/tutorial-distances/`
#    (default `runs/`).

# %%
import os
import shutil
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # run as a script: figures go to files only
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.spatial import procrustes
from skbio import DistanceMatrix, TreeNode
from skbio.diversity import beta_diversity
from skbio.stats.distance import mantel
from skbio.stats.ordination import pcoa

import aam_ds as aam_ds_package
from aam_ds.cli import main as aam_ds
from aam_ds.data.metadata import load_metadata
from aam_ds.data.synthetic import demo_data
from aam_ds.data.table import load_table
from aam_ds.distances.io import read_distance_matrix
from aam_ds.engine import trainer
from aam_ds.inference.predict import load_predictor, prepare_inputs
from aam_ds.model.losses import embedding_distances
from aam_ds.prediction import embed_inputs
from aam_ds.spec import load_spec

os.chdir(Path(aam_ds_package.__file__).resolve().parents[1])  # the repository root (configs/, ../shared/data)
STEPS = int(os.environ.get("AAM_TUTORIAL_STEPS", "300"))
OUT = (Path(os.environ.get("AAM_TUTORIAL_DIR", "runs")) / "tutorial-distances").resolve()
OUT.mkdir(parents=True, exist_ok=True)
MP = Path(os.environ.get("AAM_MP_DIR", "../shared/data/small"))
DEMO = demo_data(Path("~/.cache/aam-ds"))

# %% [markdown]
# ## 1. Exact distances: three implementations
#
# `aam-ds distances` writes the full matrix in the unifrac package's HDF5 layout; `--engine ssu`
# hands the same table and tree to biocore's `ssu` binary. scikit-bio computes UniFrac from the
# counts and a `TreeNode`. We compare unweighted and normalised weighted UniFrac.

# %%
if (MP / "moving_pictures.table.biom").is_file():
    TABLE, TREE, DATASET = MP / "moving_pictures.table.biom", MP / "moving_pictures.rooted-tree.nwk", "moving pictures"
else:
    TABLE, TREE, DATASET = DEMO.table, DEMO.tree, "demo data (the moving pictures folder is absent)"
table = load_table(TABLE)
print(f"{DATASET}: {len(table.sample_ids)} samples x {len(table.asv_ids)} ASVs")

engines = ["torch"] + (["ssu"] if shutil.which("ssu") else [])
if "ssu" not in engines:
    print("biocore's ssu is not installed (Debian: apt-get install unifrac-tools): that column is left out")
metrics = {"unweighted": ("unweighted_unifrac", {}), "weighted_normalized": ("weighted_unifrac", {"normalized": True})}
rows = []
for metric, (skbio_name, skbio_options) in metrics.items():
    matrices = {}
    for engine in engines:
        out = OUT / f"{metric}-{engine}.h5"
        assert aam_ds(["distances", "--table", str(TABLE), "--tree", str(TREE), "--metric", metric, "--engine", engine,
                       "--out", str(out), "--no-progress", "--overwrite"]) == 0
        ids, matrices[f"aam-ds ({engine})" if engine == "torch" else "biocore ssu"] = read_distance_matrix(out)
        assert ids == table.sample_ids
    counts = table.counts.toarray()  # [samples, ASVs]
    reference = beta_diversity(skbio_name, counts, ids=table.sample_ids, taxa=table.asv_ids,
                               tree=TreeNode.read(str(TREE)), validate=False, **skbio_options)
    matrices["scikit-bio"] = reference.data
    names = list(matrices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rows.append({"metric": metric, "pair": f"{a} vs {b}", "max |difference|": np.abs(matrices[a] - matrices[b]).max()})
print(pd.DataFrame(rows).to_string(index=False))

# %% [markdown]
# The three agree to rounding: on the moving pictures data aam-ds and scikit-bio (both in fp64) differ
# by about 1e-15, and both differ from ssu by about 1e-8.
#
# ## 2. Predicted vs true distances
#
# Pretrain a tiny model on the demo data (its ASV IDs are the sequences, so no `rep-seqs` is needed),
# holding out 20 % of the samples; embed the held-out samples with the exported model and take
# the Euclidean distances between the embeddings, the model's predicted UniFrac distances.

# %%
run = OUT / "pretrain"
spec = load_spec("configs/demo.yaml", [f"schedule.steps={STEPS}", f"schedule.warmup_steps={min(10, STEPS // 2)}",
                                       "data.split.val_fraction=0.2", f"tracking.run_dir={run}",
                                       "tracking.rich=false", "tracking.overwrite=true"])
trainer.pretrain(spec)
held_out = (run / "splits" / "val.txt").read_text().split()

export, model = load_predictor(run / "model.pt")
inputs = prepare_inputs(export, DEMO.table)
embeddings = embed_inputs(model, inputs)  # float64 [samples, D]
rows = [inputs.sample_ids.index(s) for s in held_out]
predicted = embedding_distances(torch.from_numpy(embeddings[rows])).numpy()

out = OUT / "demo-unweighted.h5"
assert aam_ds(["distances", "--table", str(DEMO.table), "--tree", str(DEMO.tree), "--metric", "unweighted",
               "--out", str(out), "--no-progress", "--overwrite"]) == 0
ids, full = read_distance_matrix(out)
index = [ids.index(s) for s in held_out]
true = full[np.ix_(index, index)]
r, p, _ = mantel(DistanceMatrix(true, held_out), DistanceMatrix(predicted, held_out), permutations=199, seed=0)
print(f"{len(held_out)} held-out samples; Mantel r (Pearson) between true and predicted distances {r:.3f} (p = {p:.3f})")

# %% [markdown]
# A PCoA of each matrix (the predicted one rotated and scaled onto the true one by Procrustes, which
# keeps its shape), coloured by body site, and the distances themselves pair by pair:

# %%
sites = load_metadata(DEMO.metadata).loc[held_out, "body_site"]
true_pc = pcoa(DistanceMatrix(true, held_out), number_of_dimensions=2).samples.to_numpy()
predicted_pc = pcoa(DistanceMatrix(predicted, held_out), number_of_dimensions=2).samples.to_numpy()
true_pc, predicted_pc, disparity = procrustes(true_pc, predicted_pc)
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
for ax, points, title in ((axes[0], true_pc, "true unweighted UniFrac"), (axes[1], predicted_pc, "predicted (embeddings)")):
    for site in sorted(sites.unique()):
        mask = (sites == site).to_numpy()
        ax.scatter(points[mask, 0], points[mask, 1], s=18, label=site)
    ax.set(title=f"PCoA: {title}", xlabel="PC1", ylabel="PC2")
axes[0].legend(fontsize=8)
upper = np.triu_indices(len(held_out), k=1)
axes[2].scatter(true[upper], predicted[upper], s=4, alpha=0.5)
axes[2].set(xlabel="true distance", ylabel="predicted distance", title=f"sample pairs (Mantel r {r:.2f})")
fig.tight_layout()
plt.show()
print(f"Procrustes disparity {disparity:.3f} (0: the same configuration up to rotation and scale, 1: unrelated)")
