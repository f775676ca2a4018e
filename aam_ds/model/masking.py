"""BERT-style 80/10/10 masking of nucleotide tokens for the masked-nucleotide loss.

A fraction ``mask_fraction`` of the A/C/G/T positions is selected; of those, 80 % become MASK, 10 %
a random nucleotide drawn uniformly from A/C/G/T, and 10 % keep their token. PAD and N are never
selected. Labels hold the original token at selected positions and ``IGNORE_INDEX`` elsewhere, so
the loss (training and validation alike) is measured on masked positions only. Validation passes a
generator with a fixed seed so the same positions are masked at every evaluation.
"""

from __future__ import annotations

import torch

from aam_ds.model.vocabulary import MASK, A, T

IGNORE_INDEX = -100


def mask_nucleotides(tokens: torch.Tensor, mask_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens ``int64 [...]`` -> (masked tokens ``[...]``, labels ``[...]`` with ``IGNORE_INDEX`` where unmasked).

    Random numbers come from ``generator`` (on its own device) so runs are reproducible.
    """
    if not 0.0 < mask_fraction < 1.0:
        raise ValueError(f"mask_fraction must be in (0, 1), got {mask_fraction}")
    draw = dict(generator=generator, device=generator.device)
    select_u = torch.rand(tokens.shape, **draw).to(tokens.device)
    action_u = torch.rand(tokens.shape, **draw).to(tokens.device)
    random_base = torch.randint(A, T + 1, tokens.shape, **draw).to(tokens.device, tokens.dtype)

    maskable = (tokens >= A) & (tokens <= T)
    selected = maskable & (select_u < mask_fraction)
    masked = torch.where(selected & (action_u < 0.8), torch.full_like(tokens, MASK), tokens)
    masked = torch.where(selected & (action_u >= 0.8) & (action_u < 0.9), random_base, masked)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return masked, labels
