"""Predictions of a fine-tuned export on new tables (``aam-ds predict``) and on a run's own splits."""

from aam_ds.inference.predict import (
                                      ModelInputs,
                                      predict_inputs,
                                      predict_split,
                                      predict_table,
                                      prediction_paths,
                                      prepare_inputs,
                                      write_prediction_files,
)

__all__ = ["ModelInputs", "predict_inputs", "predict_split", "predict_table", "prepare_inputs", "prediction_paths",
           "write_prediction_files"]
