"""Input data: feature tables, sequences, metadata, tokens, ASV selection, splits and datasets."""
