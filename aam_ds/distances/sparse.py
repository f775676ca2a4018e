"""Sparse per-sample vectors held on a torch device, densified one batch at a time."""

from __future__ import annotations

import scipy.sparse as sp
import torch


class SparseRows:
    """A CSR matrix ``[N, K]`` as torch tensors on ``device``.

    :meth:`dense` returns the rows of a batch densified over only the columns that are non-zero in
    at least one of them, so a batch costs ``B x K_batch`` however large ``K`` is.
    """

    def __init__(self, matrix: sp.csr_matrix, device: torch.device | str, dtype: torch.dtype):
        matrix = sp.csr_matrix(matrix)
        matrix.sort_indices()
        self.shape = matrix.shape
        self.indptr = torch.as_tensor(matrix.indptr, dtype=torch.int64, device=device)
        self.indices = torch.as_tensor(matrix.indices, dtype=torch.int64, device=device)
        self.values = torch.as_tensor(matrix.data, device=device).to(dtype)

    def dense(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values [B, K_b], columns [K_b])`` for sample rows ``rows`` (int64 ``[B]``)."""
        rows = rows.to(self.indptr.device)
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        row_of_entry = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
        offset = torch.cumsum(counts, 0) - counts
        position = starts[row_of_entry] + torch.arange(len(row_of_entry), device=rows.device) - offset[row_of_entry]
        columns, column_of_entry = torch.unique(self.indices[position], return_inverse=True)
        out = torch.zeros(len(rows), len(columns), dtype=self.values.dtype, device=rows.device)
        out[row_of_entry, column_of_entry] = self.values[position]
        return out, columns
