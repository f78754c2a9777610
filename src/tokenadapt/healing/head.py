"""The output head of a heal step, with the weight gradient computed only for the rows the step may move.

With sparse updates a step moves the rows of the tokens in its batch (a few hundred of 151k), yet autograd's
`hidden @ W.T` backward computes the full [V, d] weight gradient: as many multiply-adds as the head's forward, and
a third of a step's head cost. `RowSparseHead` computes the hidden-state gradient in full (the body needs it) and
the weight gradient for `rows` only; every other row's gradient is exactly zero, as the step mask would make it.

    >>> head = output_head(model)                    # None unless logits == last hidden state @ W.T
    >>> logits = RowSparseHead.apply(hidden, head, rows)   # [T, d], [V, d], [R] -> [T, V]
"""

from __future__ import annotations

from typing import Any

import torch


class RowSparseHead(torch.autograd.Function):
    """logits [T, V] = hidden [T, d] @ weight [V, d].T; backward: d hidden in full, d weight only in `rows` [R]."""

    @staticmethod
    def forward(hidden: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return hidden @ weight.T

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        hidden, weight, rows = inputs
        ctx.save_for_backward(hidden, weight, rows)

    @staticmethod
    def backward(ctx: Any, grad_logits: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        hidden, weight, rows = ctx.saved_tensors
        grad_hidden = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            grad_weight[rows] = grad_logits[:, rows].T @ hidden
        return grad_hidden, grad_weight, None


def output_head(model: Any) -> torch.nn.Parameter | None:
    """The output matrix [V, d] when the model's logits are exactly its decoder's last hidden state times it.

    Checked on a short probe, so a head with a bias, a logit scale or soft-capping (which this shortcut would get
    wrong) returns None and the caller keeps the model's own forward.
    """
    head, decoder = model.get_output_embeddings(), model.get_decoder()
    weight = getattr(head, "weight", None)
    if weight is None or getattr(head, "bias", None) is not None or decoder is None or decoder is model:
        return None
    probe = torch.arange(min(8, weight.shape[0])).unsqueeze(0)
    with torch.no_grad():
        expected = model(input_ids=probe).logits[0]
        hidden = decoder(input_ids=probe).last_hidden_state[0]
        if expected.shape != (probe.shape[1], weight.shape[0]):
            return None
        same = torch.allclose((hidden @ weight.T).float(), expected.float(), rtol=1e-4, atol=1e-4)
    return weight if same else None
