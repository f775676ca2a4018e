"""UniFrac between two sets of samples, from their dense branch proportions, in torch.

Every kernel takes ``a [m, K]`` and ``b [n, K]`` (per-sample proportions of reads below each of
``K`` branches; rows sum over tips to 1) and ``length [K]`` (non-negative branch lengths) and
returns ``[m, n]`` distances, matching biocore ``unifrac`` (Striped UniFrac):

- unweighted: ``sum l [a>0 xor b>0] / sum l [a>0 or b>0]``, as matrix products: with presence
  ``P``, shared length ``S = (P_a * l) @ P_b^T`` and ``union = P_a l + P_b l - S``, both exact sums.
- weighted_unnormalized: ``sum l |a - b|``.
- weighted_normalized: the same over ``sum l (a + b)``.
- generalized (Chen et al. 2012): ``sum l (a+b)^alpha |a-b|/(a+b) / sum l (a+b)^alpha`` over
  branches with ``a + b > 0``.

A pair with an empty denominator (two samples without reads, or whose reads sit only below
branches of length 0; biocore unifrac gives NaN) has distance 0, and so does every pair when no
column is left at all (``K = 0``).

The weighted and generalized kernels evaluate their per-branch terms only on the support of each
row of ``a`` (typically a tenth of the branches present in a batch); what branches outside it
contribute is a per-row total of ``b`` minus a matrix product, so the result stays exact.
"""

from __future__ import annotations

from typing import Iterator

import torch

# elements of the [chunk, k, n] intermediates of the support-restricted kernels (cache-sized)
_CHUNK_ELEMENTS = 1 << 18


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / torch.where(denominator > 0, denominator, 1), 0)


def _over_support(a: torch.Tensor, b: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, Iterator[tuple]]:
    """Walk the rows of ``a [m, K]`` in chunks, each restricted to the columns where they are non-zero.

    Returns ``order`` (rows of ``a`` sorted by support size, so that padding stays small) and an
    iterator of ``(span, av [c, k, 1], bv [c, k, n], l [c, k])`` for the rows ``order[span]``.
    Each row's support is padded to the chunk's widest with a dummy column where ``a = 1``,
    ``b = 0`` and ``l = 0``, so padding adds nothing to any length-weighted sum and needs no mask.
    Chunks keep the ``[c, k, n]`` intermediates cache-sized. With no columns at all (``K = 0``: the
    samples share no branch of positive length) every row is the dummy column alone.
    """
    present = a > 0
    width = present.sum(1)
    order = torch.argsort(width)
    width = width[order]
    row, col = present[order].nonzero(as_tuple=True)  # row-major: each row's columns in order
    rank = torch.arange(len(row), device=a.device) - (torch.cumsum(width, 0) - width)[row]
    cols = torch.full((len(a), max(1, int(width.max()))), a.shape[1], dtype=torch.int64, device=a.device)
    cols[row, rank] = col
    a_support = torch.cat([a, a.new_ones(len(a), 1)], 1)[order].gather(1, cols)[..., None]
    l_support = torch.cat([length, length.new_zeros(1)])[cols]
    b_columns = torch.cat([b, b.new_zeros(len(b), 1)], 1).T.contiguous()  # [K + 1, n]: rows copy fast
    widths = width.tolist()

    def chunks() -> Iterator[tuple]:
        start = 0
        while start < len(a):
            stop = start + 1
            while stop < len(a) and (stop + 1 - start) * max(1, widths[stop]) * len(b) <= _CHUNK_ELEMENTS:
                stop += 1
            k = max(1, widths[stop - 1])
            b_support = b_columns.index_select(0, cols[start:stop, :k].flatten()).view(stop - start, k, len(b))
            yield slice(start, stop), a_support[start:stop, :k], b_support, l_support[start:stop, :k]
            start = stop

    return order, chunks()


def _unsort(order: torch.Tensor, sorted_rows: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(sorted_rows)
    out[order] = sorted_rows
    return out


def unweighted(a: torch.Tensor, b: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """The shared-length product runs only over branches present on both sides (for ``a is b``,
    in at least two samples: a branch of one sample is shared only with itself, on the diagonal)."""
    pa, pb = (a > 0).to(length.dtype), (b > 0).to(length.dtype)
    total_a, total_b = pa @ length, pb @ length
    both = (pa.sum(0) > 1) if a is b else (pa.any(0) & pb.any(0))
    shared = (pa[:, both] * length[both]) @ pb[:, both].T
    if a is b:
        shared.diagonal().copy_(total_a)
    union = total_a[:, None] + total_b[None, :] - shared
    return _ratio(union - shared, union)


def weighted_unnormalized(a: torch.Tensor, b: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """``sum l |a - b| = sum l b + sum over a's support of l (|a - b| - b)``; the last ``l b`` term
    is a matrix product with a's presence, so only ``|a - b|`` is evaluated, ``n x nnz(a)`` times."""
    b_rest = (b @ length)[None, :] - (a > 0).to(a.dtype) @ (b * length).T  # [m, n]
    order, chunks = _over_support(a, b, length)
    out = torch.empty(len(a), len(b), dtype=a.dtype, device=a.device)
    for span, av, bv, lengths in chunks:
        out[span] = torch.einsum("ckn,ck->cn", (bv - av).abs_(), lengths)
    return _unsort(order, out) + b_rest


def weighted_normalized(a: torch.Tensor, b: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Weighted normalised UniFrac between the rows of ``a`` ``[N, E]`` and ``b`` ``[M, E]`` (branch abundances, ``length [E]``) -> ``[N, M]``."""
    total = (a @ length)[:, None] + (b @ length)[None, :]
    return _ratio(weighted_unnormalized(a, b, length), total)


def generalized(a: torch.Tensor, b: torch.Tensor, length: torch.Tensor, alpha: float) -> torch.Tensor:
    """Branches where only ``b`` is non-zero add ``l b^alpha`` to both sums: a per-row total of
    ``b`` minus (a matrix product) its part on a's support. The rest is a sum over a's support of
    ``q |a - b|`` (numerator) and ``q (a + b)`` (denominator) with ``q = l (a + b)^(alpha - 1)``."""
    b_weight = torch.where(b > 0, b, 1).pow(alpha).where(b > 0, 0) * length  # l b^alpha on b's support
    b_rest = b_weight.sum(1)[None, :] - (a > 0).to(a.dtype) @ b_weight.T  # [m, n]
    order, chunks = _over_support(a, b, length)
    numerator = torch.empty(len(a), len(b), dtype=a.dtype, device=a.device)
    denominator = torch.empty_like(numerator)
    for span, av, bv, lengths in chunks:
        total = bv + av
        q = total.pow(alpha - 1).mul_(lengths[..., None])
        numerator[span] = (q * (bv - av).abs_()).sum(1)
        denominator[span] = q.mul_(total).sum(1)
    return _ratio(_unsort(order, numerator) + b_rest, _unsort(order, denominator) + b_rest)
