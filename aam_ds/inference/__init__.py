"""Predictions of a fine-tuned export on new tables (``aam-ds predict``); the prediction code path
it shares with the trainer's split predictions is :mod:`aam_ds.prediction`."""

from aam_ds.inference.predict import predict_table, prepare_inputs

__all__ = ["predict_table", "prepare_inputs"]
