"""Evaluation of predictions (metrics, tables, plots) and the random-forest baseline."""
