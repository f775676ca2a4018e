"""Can the model learn the pretraining objective? A plain-torch CPU pretraining check.

Trains ``AAMModel`` with the pairwise-distance and masked-nucleotide losses (no DeepSpeed: this
checks the model and losses; the engine runs the same objective distributed) on the demo data or
on ``../shared/data/cfs``, and prints both losses at the start and end and the Pearson correlation
between predicted and true distances over pairs of held-out (validation) samples.

Target distances: unweighted UniFrac from scikit-bio (an independent oracle for this check).

    python bench/bench_model.py --data demo --steps 300
    python bench/bench_model.py --data cfs --steps 300
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import skbio
import torch
from skbio.diversity import beta_diversity

from aam_ds.data.dataset import collate
from aam_ds.data.prepare import prepare_data
from aam_ds.model.aam import AAMModel, required_outputs
from aam_ds.model.losses import embedding_distances, masked_nucleotide_loss, pairwise_distance_loss
from aam_ds.model.masking import mask_nucleotides
from aam_ds.spec import build_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def unifrac_matrix(prepared) -> torch.Tensor:
    """Unweighted UniFrac ``[N, N]`` over the table's samples (scikit-bio)."""
    table = prepared.table
    tree = skbio.TreeNode.read(str(prepared.tree))
    dm = beta_diversity(
        "unweighted_unifrac", table.counts.toarray().astype(int), ids=table.sample_ids, taxa=table.asv_ids, tree=tree
    )
    return torch.tensor(dm.data, dtype=torch.float32)


def held_out_pearson(model: AAMModel, dataset, target: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        batch = collate([dataset[i] for i in range(len(dataset))])
        emb = model(batch["tokens"], batch["counts"], {"sample_embedding"})["sample_embedding"]
    model.train()
    i, j = torch.triu_indices(len(dataset), len(dataset), offset=1)
    predicted = embedding_distances(emb)[i, j]
    true = target[batch["sample_index"]][:, batch["sample_index"]][i, j]
    return float(np.corrcoef(predicted.numpy(), true.numpy())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["demo", "cfs"], default="demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-asvs", type=int, default=64)
    parser.add_argument("--cache-dir", default="/tmp/aam-ds-bench-cache")
    args = parser.parse_args()

    data = {"cache_dir": args.cache_dir, "max_asvs": args.max_asvs, "split": {"val_fraction": 0.2}}
    if args.data == "cfs":
        data.update(table=SHARED / "cfs" / "table.biom", tree=SHARED / "cfs" / "tree.nwk")
    spec = build_spec({"data": data, "model": {"preset": args.preset, "asv_chunk_size": 512}})
    prepared = prepare_data(spec)
    target = unifrac_matrix(prepared)
    train, val = prepared.dataset("train"), prepared.dataset("val")
    print(f"{args.data}: {len(train)} train / {len(val)} val samples, UniFrac range {target.min():.3f}..{target.max():.3f}")

    torch.manual_seed(0)
    model = AAMModel(spec.model, prepared.max_seq_len)
    want = required_outputs(spec.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    print(f"before training: held-out Pearson r = {held_out_pearson(model, val, target):.3f}")
    history, start = [], time.perf_counter()
    for step in range(args.steps):
        idx = torch.randperm(len(train), generator=gen)[: args.batch]
        batch = collate([train[int(i)] for i in idx])
        masked, labels = mask_nucleotides(batch["tokens"], spec.loss.mask_fraction, gen)
        out = model(masked, batch["counts"], want)
        sub = batch["sample_index"]
        pairwise = pairwise_distance_loss(out["sample_embedding"], target[sub][:, sub])
        nucleotide = masked_nucleotide_loss(out["nucleotide_logits"], labels)
        loss = spec.loss.pairwise_weight * pairwise + spec.loss.nucleotide_weight * nucleotide
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append((pairwise.item(), nucleotide.item()))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  pairwise {pairwise.item():.4f}  nucleotide {nucleotide.item():.4f}  ({time.perf_counter() - start:.0f} s)")
    first, last = np.mean(history[:10], axis=0), np.mean(history[-10:], axis=0)
    print(f"pairwise loss   {first[0]:.4f} -> {last[0]:.4f} (mean of first / last 10 steps)")
    print(f"nucleotide loss {first[1]:.4f} -> {last[1]:.4f}")
    print(f"after training: held-out Pearson r = {held_out_pearson(model, val, target):.3f}")


if __name__ == "__main__":
    main()
