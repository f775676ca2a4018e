"""Each distinct ASV of a batch encoded once.

The samples of a batch share many ASVs (Huang oral, micro batch 8: 439 present ASVs, 194
distinct), and the nucleotide transformer is most of a step's work, so
:meth:`~aam_ds.model.aam.AAMModel.forward` encodes the distinct rows of its present ASVs and
hands every copy its ASV's vector (:func:`distinct_rows`). This is exact: the copies would have
been encoded from the same tokens by the same weights, and the gradient through the shared
encoding is the sum over the copies (the batch gradient). Dropout would differ (one draw per
distinct ASV instead of one per copy), so the model does not pack while training with dropout.

Masked-nucleotide pretraining: the sample path reads the unmasked ASVs (packed as above), and the
nucleotide loss is computed on one masked copy of each distinct ASV of the micro-batch
(:func:`nucleotide_rows`), with its own mask, encoded in the same pass. Masking every copy and
feeding the masked copies to the sample path as well (the step before) encoded all 439 copies of the
example above; this encodes 194 + 194. Sharing one mask among the copies of an ASV, so that masked
copies packed, cut pretraining's held-out distance r on the demo data from 0.85 / 0.82 to 0.76 /
0.56 (seeds 0 / 1, tests/test_engine_quality.py) and is not done.
"""

from __future__ import annotations

import torch


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rows ``[N, L]`` -> (distinct rows ``[K, L]``, ``int64 [N]`` index of each row among them), so
    that ``distinct[index]`` equals ``rows``."""
    if rows.shape[0] == 0:
        return rows, torch.zeros(0, dtype=torch.int64, device=rows.device)
    distinct, index = torch.unique(rows, dim=0, return_inverse=True)
    return distinct, index


def nucleotide_rows(tokens: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The distinct ASVs present in a batch, ``[M, L]`` in a fixed (sorted) order: those whose
    nucleotides masked-nucleotide pretraining masks and predicts, once each.

    Parameters
    ----------
    tokens : int ``[B, A, L]`` nucleotide tokens of the batch's ASV slots.
    counts : float ``[B, A]`` read counts; a slot holds an ASV where ``counts > 0``.
    """
    return distinct_rows(tokens.reshape(-1, tokens.shape[-1])[counts.reshape(-1) > 0])[0]
