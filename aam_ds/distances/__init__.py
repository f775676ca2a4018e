"""Distances between samples: the pretraining target.

tree.py (Newick / Phylogeny[Rooted] -> arrays), branches.py (per-sample branch proportions),
sparse.py (batch densification on the device), unifrac.py and ecological.py (torch kernels),
registry.py (the metric registry: names, kernels, trees, parameters),
metric.py (a metric bound to a table), full.py (block-wise full matrices), blockfile.py (the same
written to HDF5 block by block, resumable), ssu.py (``--engine ssu``),
io.py (unifrac HDF5, .npy + IDs, square TSV), target.py (DistanceTarget for the trainer),
cli.py (``aam-ds distances``). Nothing is imported here so that the CLI stays quick to start.
"""
