"""The AAM model: encoders, heads, losses, masking and target normalisation."""
