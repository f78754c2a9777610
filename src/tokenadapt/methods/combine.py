"""Tensor helpers shared by the methods: masked softmax, sparse row combinations, the fallback mean."""

from __future__ import annotations

import torch


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over entries where `mask` is True; rows with no True entry come back all zero.

    >>> masked_softmax(torch.tensor([[0.0, 0.0, 9.0]]), torch.tensor([[True, True, False]]))
    tensor([[0.5000, 0.5000, 0.0000]])
    """
    filled = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(filled, dim=dim)
    return torch.nan_to_num(weights, nan=0.0) * mask


def combine_rows(
    old: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, chunk_size: int = 8192
) -> torch.Tensor:
    """rows[u] = sum_j weights[u, j] * old[indices[u, j]]: [V, d], [U, L], [U, L] -> [U, d] (float32).

    Chunked so that the gathered [chunk, L, d] block stays small for large vocabularies.
    """
    out = torch.zeros((indices.shape[0], old.shape[1]), dtype=torch.float32)
    for start in range(0, indices.shape[0], chunk_size):
        idx = indices[start : start + chunk_size]
        w = weights[start : start + chunk_size].to(torch.float32)
        gathered = old[idx].to(torch.float32)  # [c, L, d]
        out[start : start + chunk_size] = torch.bmm(w.unsqueeze(1), gathered).squeeze(1)
    return out


def candidate_mean(old: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[d] mean of the old rows that are real tokens (special and padding rows excluded)."""
    rows = old[candidates] if bool(candidates.any()) else old
    return rows.to(torch.float32).mean(dim=0)


def fill_missing(rows: torch.Tensor, missing: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """rows with `missing` [U] bool rows replaced by `fallback` [d]."""
    rows[missing] = fallback
    return rows
