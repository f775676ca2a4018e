"""``aam-ds benchmark``: classical baselines and AAM on the same folds, one report folder."""
