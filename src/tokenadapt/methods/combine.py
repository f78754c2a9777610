"""Tensor helpers shared by the methods: masked softmax, sparse row combinations, the fallback mean."""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over entries where `mask` is True; rows with no True entry come back all zero.

    >>> masked_softmax(torch.tensor([[0.0, 0.0, 9.0]]), torch.tensor([[True, True, False]]))
    tensor([[0.5000, 0.5000, 0.0000]])
    """
    filled = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(filled, dim=dim)
    return torch.nan_to_num(weights, nan=0.0) * mask


def combine_rows(old: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """rows[u] = sum_j weights[u, j] * old[indices[u, j]]: [V, d], [U, L], [U, L] -> [U, d] (float32).

    Done as one sparse [U, V] x dense [V, d] product over the non-zero weights, so the cost is O(nnz * d) whatever
    the longest decomposition L is (a dense gather would build a [U, L, d] block).

    >>> combine_rows(torch.eye(3), torch.tensor([[0, 2]]), torch.tensor([[0.25, 0.75]]))
    tensor([[0.2500, 0.0000, 0.7500]])
    """
    keep = weights != 0
    rows = torch.arange(indices.shape[0]).unsqueeze(1).expand_as(indices)[keep]
    matrix = torch.sparse_coo_tensor(
        torch.stack([rows, indices[keep]]),
        weights[keep].to(torch.float32),
        size=(indices.shape[0], old.shape[0]),
        check_invariants=False,
    )
    return torch.sparse.mm(matrix, old.to(torch.float32))


def candidate_mean(old: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[d] float32 mean of the old rows that are real tokens (special and padding rows excluded).

    One matrix-vector product: gathering the candidate rows first would copy nearly the whole matrix, once per
    column block and method call.

    >>> candidate_mean(torch.tensor([[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]), torch.tensor([True, True, False]))
    tensor([2., 3.])
    """
    old = old.to(torch.float32)
    count = int(candidates.sum())
    if count == 0:
        return old.mean(dim=0)
    return (candidates.to(torch.float32) @ old) / count


def fill_missing(rows: torch.Tensor, missing: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """rows with `missing` [U] bool rows replaced by `fallback` [d]."""
    rows[missing] = fallback
    return rows


def sparse_estimate(
    old: torch.Tensor,
    inputs: MethodInputs,
    indices: torch.Tensor,
    weights: torch.Tensor,
    found: torch.Tensor,
    path: str,
) -> Estimate:
    """Rows from a sparse combination; rows where `found` [U] is False take the mean of the old rows.

    The `paths` count says how many rows took `path` and how many fell back.
    """
    rows = fill_missing(combine_rows(old, indices, weights), ~found, candidate_mean(old, inputs.old_candidates))
    count = int(found.sum())
    return Estimate(rows, {path: count, "fallback-mean": inputs.count - count})


def sparse_rows(matrix: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """[U, d] = sparse COO [U, V] x old [V, d] in float32 (O(nnz * d), never a dense [U, V])."""
    return torch.sparse.mm(matrix.to(torch.float32), old.to(torch.float32))


def sparse_matrix(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A coalesced float32 sparse COO matrix from (row, col, value) triples; duplicate pairs are summed.

    >>> sparse_matrix(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0.5, 0.25]), (1, 2)).to_dense()
    tensor([[0.0000, 0.7500]])
    """
    indices = torch.stack([rows.to(torch.long), cols.to(torch.long)])
    matrix = torch.sparse_coo_tensor(indices, values.to(torch.float32), size=shape, check_invariants=False)
    return matrix.coalesce()


def fallback_estimate(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    """The `--fallback` method's estimate of every row, for methods that cannot place some tokens themselves."""
    from tokenadapt.methods import get_method  # the registry imports every method module, this one included

    return get_method(inputs.options.fallback).fn(old, inputs)


def with_fallback(
    old: torch.Tensor, inputs: MethodInputs, rows: torch.Tensor, found: torch.Tensor, path: str
) -> Estimate:
    """`rows` [U, d] where `found` [U], the fallback method's rows elsewhere; paths count both.

    The paths are {path: found, "fallback-<name>": the rest}, so the report says what unplaced tokens became.
    """
    count = int(found.sum())
    paths = {path: count, f"fallback-{inputs.options.fallback}": inputs.count - count}
    if count == inputs.count:
        return Estimate(rows, paths)
    fallback = fallback_estimate(old, inputs).rows
    return Estimate(torch.where(found[:, None], rows, fallback), paths)
