"""aam-ds: DeepSpeed trainer for AAM (Attention All Microbes) microbiome transformers."""

__version__ = "0.1.0"
