"""The affine head's backward from a sparse, unbiased estimate of the softmax gradient (`--gradient-samples N`).

The exact backward of log p(y_t) through a [V, d] head multiplies the dense [T, V] gradient by the matrix twice:
once for the hidden states (`G @ W`) and once for the map (`G[:, rows] @ F`), each as many multiply-adds as the
forward, and together a quarter of a heal step for a 151k vocabulary. Yet the gradient of log p(y_t) by the
logits is e_y - p_t, and p_t is a distribution: its N largest probabilities are kept exactly and the rest of its
mass is represented by N draws from the rest (each carrying an equal share of that mass). The estimate is
unbiased, so the step is the exact step plus zero-mean noise, which the map's gradient, a sum over every position
of the batch, averages down. It touches 2N + 1 rows per position instead of V.

    >>> scored = SampledAffineHead.apply(hidden, affine.weight, affine.A, affine.b, affine, targets, 64, rng)
    >>> (-scored.sum()).backward()   # scored [T]: the exact log-probabilities; only the gradient is estimated
"""

from __future__ import annotations

from typing import Any

import torch

from tokenadapt.healing.affine import AffineRows

_CHUNK = 128  # positions per gather: bounds the [chunk, 2N + 1, d] gathered rows to tens of MB
_LOWEST_LOG_PROBABILITY = -80.0


def sparse_softmax_gradient(
    logits: torch.Tensor,
    targets: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    log_normaliser: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An unbiased sparse estimate of d log p(targets) / d logits = e_y - softmax(logits), row by row.

    logits [T, V] (overwritten: it becomes the probabilities of the rest), targets [T], optionally the rows'
    logsumexp [T] -> (index [T, M], coefficient [T, M]) with M = 2 * samples + 1: the target (+1), the `samples`
    most probable tokens (minus their probability) and `samples` draws from the remaining probabilities (minus an
    equal share of the remaining mass). Summing coefficient into the indexed columns gives, in expectation, exactly
    e_y - p.

    >>> index, coefficient = sparse_softmax_gradient(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([0]), 1)
    >>> index[0, :2].tolist(), [round(c, 3) for c in coefficient[0, :2].tolist()]
    ([0, 2], [1.0, -0.987])
    """
    if log_normaliser is None:
        log_normaliser = torch.logsumexp(logits, dim=1)
    # in place: [T, V] is the largest tensor here. Log-probabilities below -80 (p < 2e-35) become -80: exp is
    # six times slower on such inputs here, and the mass this adds to the rest is under 1e-29 for any vocabulary
    probabilities = logits.sub_(log_normaliser.unsqueeze(1)).clamp_(min=_LOWEST_LOG_PROBABILITY).exp_()
    if not torch.isfinite(log_normaliser).all():
        # a diverged step: its loss is already non-finite and the trainer stops on it; drawing must not raise first
        torch.nan_to_num_(probabilities, nan=0.0, posinf=0.0, neginf=0.0)
    top_p, top_index = probabilities.topk(samples, dim=1)
    probabilities.scatter_(1, top_index, 0.0)
    rest = probabilities.sum(dim=1)  # [T]; summed, not 1 - top: rounding must not leave mass where none is left
    empty = rest <= 0  # all mass in the top: draw anything, with weight 0
    probabilities[empty, 0] = 1.0
    drawn = torch.multinomial(probabilities, samples, replacement=True, generator=generator)
    index = torch.cat([targets.unsqueeze(1), top_index, drawn], dim=1)
    share = (rest / samples).unsqueeze(1).expand(-1, samples)
    coefficient = torch.cat([torch.ones_like(rest).unsqueeze(1), -top_p, -share], dim=1)
    return index, coefficient


def gathered_sum(coefficient: torch.Tensor, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """sum_m coefficient[t, m] * table[index[t, m]] for each t: [T, M], [R, k], [T, M] -> [T, k], in chunks."""
    out = coefficient.new_empty(coefficient.shape[0], table.shape[1])
    for start in range(0, coefficient.shape[0], _CHUNK):
        end = start + _CHUNK
        out[start:end] = torch.bmm(coefficient[start:end].unsqueeze(1), table[index[start:end]]).squeeze(1)
    return out


class SampledAffineHead(torch.autograd.Function):
    """log p(targets) [T] from hidden [T, d] @ weight [V, d].T (exact); backward: d hidden and the map's dA, db from
    `sparse_softmax_gradient` with `samples` kept and drawn probabilities per position. `weight` must hold the
    materialised rows (`affine.materialize()`) and gets no gradient itself."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        A: torch.Tensor,
        b: torch.Tensor,
        affine: AffineRows,
        targets: torch.Tensor,
        samples: int,
        generator: torch.Generator | None,
        delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = hidden @ weight.T
        # the fused cross-entropy kernel is several times faster on CPU than torch.logsumexp over [T, V]
        scored = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        log_normaliser = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - scored
        ctx.save_for_backward(hidden, weight, targets, logits, log_normaliser)
        ctx.affine, ctx.samples, ctx.generator = affine, samples, generator
        return scored

    @staticmethod
    def backward(ctx: Any, grad_scored: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, logits, log_normaliser = ctx.saved_tensors
        affine: AffineRows = ctx.affine
        with torch.no_grad():
            # the saved logits become the probabilities in place: backward runs once, and nothing else reads them
            index, coefficient = sparse_softmax_gradient(logits, targets, ctx.samples, ctx.generator, log_normaliser)
            coefficient = coefficient * grad_scored.unsqueeze(1)
            grad_hidden = gathered_sum(coefficient, weight, index) if ctx.needs_input_grad[0] else None
            grad_A = grad_b = grad_delta = None
            position = affine.position[index]  # [T, M]: index into the mapped rows, -1 for the others
            if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
                mapped = coefficient * affine.on_map(position)
                parts = [gathered_sum(mapped, table, read) for table, read in affine.reads(position.clamp(min=0))]
                grad_A = hidden.T @ torch.cat(parts, dim=1)
                grad_b = hidden.T @ mapped.sum(dim=1)
            if len(ctx.needs_input_grad) > 8 and ctx.needs_input_grad[8]:
                slot = torch.where(position >= 0, affine.slot[position.clamp(min=0)], -1)  # [T, M]: index into R
                grad_delta = scattered_rows(coefficient, slot, hidden, affine.active.numel())
        # without `delta` autograd drops the trailing None
        return grad_hidden, None, grad_A, grad_b, None, None, None, None, grad_delta


def scattered_rows(coefficient: torch.Tensor, position: torch.Tensor, hidden: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, d] with row n = sum over (t, m) where position[t, m] == n of coefficient[t, m] * hidden[t]: the
    sparse estimate's gradient of each mapped row, as one sparse [rows, T] @ [T, d] product (entries with
    position -1 or coefficient 0 are left out).

    >>> scattered_rows(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, -1]]), torch.tensor([[3.0]]), 2).tolist()
    [[0.0], [3.0]]
    """
    keep = (position >= 0) & (coefficient != 0)
    at, _ = keep.nonzero(as_tuple=True)
    indices = torch.stack([position[keep], at])
    matrix = torch.sparse_coo_tensor(indices, coefficient[keep], (rows, hidden.shape[0]), check_invariants=False)
    return torch.sparse.mm(matrix, hidden)
