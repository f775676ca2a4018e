"""Each distinct ASV of a batch encoded once.

The samples of a batch share many ASVs (Huang oral, micro batch 8: 439 present ASVs, 194
distinct), and the nucleotide transformer is most of a step's work, so
:meth:`~aam_ds.model.aam.AAMModel.forward` encodes the distinct rows of its present ASVs and
hands every copy its ASV's vector (:func:`distinct_rows`). This is exact: the copies would have
been encoded from the same tokens by the same weights, and the gradient through the shared
encoding is the sum over the copies (the batch gradient). Dropout would differ (one draw per
distinct ASV instead of one per copy), so the model does not pack while training with dropout.

Masked-nucleotide pretraining masks tokens at random per ASV row, which would make copies
differ: :func:`mask_distinct_asvs` draws one mask per distinct ASV of the batch and gives each copy
the same masked tokens, so packing still applies. Every copy keeps its own labels, so the
nucleotide loss weighs an ASV by how many samples hold it, as before.
"""

from __future__ import annotations

import torch

from aam_ds.model.masking import mask_nucleotides


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows ``[N, L]`` -> (distinct rows ``[K, L]``, ``int64 [N]`` index of each row among them), so
    that ``distinct[index]`` equals ``rows``."""
    if rows.shape[0] == 0:
        return rows, torch.zeros(0, dtype=torch.int64, device=rows.device)
    distinct, index = torch.unique(rows, dim=0, return_inverse=True)
    return distinct, index


def mask_distinct_asvs(tokens: torch.Tensor, mask_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~aam_ds.model.masking.mask_nucleotides` of ``tokens int64 [B, A, L]`` with one draw per
    distinct ASV row: copies of an ASV (in any sample of the batch) get the same masked tokens and
    labels. Returns (masked tokens ``[B, A, L]``, labels ``[B, A, L]``)."""
    b, a, seq_len = tokens.shape
    distinct, index = distinct_rows(tokens.reshape(b * a, seq_len))
    masked, labels = mask_nucleotides(distinct, mask_fraction, generator)
    return masked[index].view(b, a, seq_len), labels[index].view(b, a, seq_len)
