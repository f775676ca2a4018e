"""``aam-ds explain``: attention maps and per-ASV / per-taxon feature importance of a fine-tuned
export, on samples preprocessed as ``aam-ds predict`` does (see docs/explain.md)."""
