"""Heal through one affine map shared by the estimated rows: row_r = A @ e_r + b, with e_r the transplant's estimate.

Training each new row on its own moves only the rows of tokens the healing text shows: on 40 KB of German text
about 70% of the test text's new-token occurrences, on code 40%, on English 25%. The heuristic's errors are
largely systematic (its rows are means of other rows: too short, pointing towards the vocabulary's centre), so
one map learned from the tokens the text shows corrects every estimated row, also those of tokens it never shows,
and its d * d + d parameters are far fewer than the rows' (576 * 577 against 112k * 576 for SmolLM2 onto Qwen2).

The rows stay ordinary embedding rows: after every optimizer step `AffineRows.materialize` writes A @ e_r + b into
the matrix, so the model's own forward (scoring, saving) needs nothing special. The gradient reaches A and b
through two paths that add no value to the forward:
- inputs: a forward hook on the input embedding adds `m - m.detach()` (m: the mapped rows of the sequence's
  new tokens), which is zero but carries the gradient to A and b;
- output: `AffineHead` computes the logits from the materialised matrix and, in backward, the gradient of A and b
  from the logits' gradient G [T, V]: with X = G[:, rows] @ E [T, d], dA = H.T @ X and db = H.T @ G[:, rows].sum(1),
  the same cost as the hidden-state gradient, and no [V, d] weight gradient at all.

The map may read more than the estimate (`--map-features pieces`: the original model's rows of the token's first and
last old-tokenizer piece). Such features are `Lookup`s into a small table, so neither the rows' values nor the
gradient products ever build an [N, d] feature matrix per feature.

On top of the map each row may keep its own correction (`residual=True`, `--residual-learning-rate`):
row_r = A @ f_r + b + delta_r. The map says what all estimates get wrong; delta_r what the map cannot say about one
token (a whitespace run in code, a German suffix). A step trains only the corrections of its batch's tokens
(`start_step`): they enter the graph as a small [R, d] leaf, so neither path builds an [N, d] gradient, and
`finish_step` hands that to the optimizer as delta's gradient, zero elsewhere.

Rows may also train outside the map (`kept`, used by --rows all for the rows the transplant copied): such a row is
its start plus `kept_scale` times its own correction, and the map's gradient leaves it out, so the map stays a fix
of the estimates' errors while the copied rows follow the company the new tokenization puts them in.

    >>> affine = AffineRows(model.get_input_embeddings().weight, mask)    # mask: bool [V], the rows to map
    >>> logits = AffineHead.apply(hidden, affine.weight, affine.A, affine.b, affine)
    >>> loss.backward(); optimizer.step(); affine.materialize()
    >>> # with residuals: affine.start_step(batch_ids) before the forward, affine.finish_step() before the step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokenadapt.errors import InputError


@dataclass(frozen=True)
class Lookup:
    """A feature read from a table: row r of the map reads `table[index[r]]` (zeros where index[r] is -1).

    The table is small (e.g. the original model's [V_old, d] matrix), so `A_j @ table[index]` for every mapped row
    costs one [V_old, d] product and a gather, not an [N, d] product, and no [N, d] copy is kept.
    """

    table: torch.Tensor  # [M, k]
    index: torch.Tensor  # long [N], -1 for "no such feature"


class AffineRows:
    """The rows `mask` of `weight` [V, d] as A @ f + b, f = [e, t_1[i_1], t_2[i_2], ...]: e the rows' values now,
    then one `Lookup` per extra feature. A [d, d + k_1 + k_2 ...] starts as [identity, 0, ...] and b at 0, so
    nothing moves until the first step.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        lookups: list[Lookup] | None = None,
        residual: bool = False,
        kept: torch.Tensor | None = None,
        kept_scale: float = 1.0,
    ) -> None:
        self.weight = weight
        self.rows = mask.nonzero().squeeze(1)  # [N]
        self.base = weight.detach()[self.rows].clone()  # [N, d]: the transplant's estimates
        # rows of `mask` the map leaves alone (`kept` [V] bool; needs residual): each keeps its value plus its own
        # correction. With --rows all these are the copied rows: already right, so no map of the estimates' errors
        # may move them, yet the new tokenization gives them new neighbours their corrections can follow
        self.follows = torch.ones_like(self.rows, dtype=torch.bool) if kept is None else ~kept[self.rows]  # [N]
        self.keeps_some = not bool(self.follows.all())
        if self.keeps_some and not residual:
            raise ValueError("rows the map keeps can train only through their residuals: pass residual=True")
        # a kept row is base + kept_scale * delta: for Adam, whose step ignores the gradient's scale, the same as a
        # learning rate kept_scale times the residuals' (--copied-learning-rate)
        self.delta_scale = torch.where(self.follows, 1.0, kept_scale).to(weight.dtype).unsqueeze(1)  # [N, 1]
        dim = int(weight.shape[1])
        self.tables: list[torch.Tensor] = []  # each with a zero row appended, which index -1 reads
        self.indices: list[torch.Tensor] = []
        padded: dict[int, torch.Tensor] = {}  # lookups into one table (first and last piece) share its copy
        for lookup in lookups or []:
            if lookup.index.shape != self.rows.shape:
                raise ValueError(f"a lookup indexes {lookup.index.numel()} rows, but {self.rows.numel()} are mapped")
            if id(lookup.table) not in padded:
                table = lookup.table.detach().to(weight.dtype)
                padded[id(lookup.table)] = torch.cat([table, table.new_zeros(1, table.shape[1])])
            self.tables.append(padded[id(lookup.table)])
            self.indices.append(torch.where(lookup.index < 0, lookup.table.shape[0], lookup.index))
        widths = [dim] + [int(t.shape[1]) for t in self.tables]
        self.A = torch.cat([torch.eye(dim, dtype=weight.dtype)] + [self.base.new_zeros(dim, w) for w in widths[1:]], 1)
        self.A.requires_grad_(True)
        ends = np.cumsum(widths).tolist()
        self.blocks = [slice(end - width, end) for end, width in zip(ends, widths, strict=True)]  # A's column blocks
        self.b = torch.zeros(dim, dtype=weight.dtype, requires_grad=True)
        self.position = torch.full((int(weight.shape[0]),), -1, dtype=torch.long)  # row id -> index in base
        self.position[self.rows] = torch.arange(self.rows.numel())
        # per-row corrections on top of the map (`--residual-learning-rate`): what no shared map can say about a
        # token. A step trains those of its batch's tokens only: `step_delta` [R, d] stands for delta[active] in the
        # graph, so no [N, d] gradient is ever built; `finish_step` hands it to the optimizer as delta's gradient.
        self.delta = torch.zeros_like(self.base).requires_grad_(True) if residual else None
        self.active = torch.zeros(0, dtype=torch.long)  # [R]: indices into the mapped rows
        self.slot = torch.full_like(self.rows, -1)  # index into the mapped rows -> index into active, or -1
        self.step_delta: torch.Tensor | None = None
        self._grad = torch.zeros_like(self.base) if residual else None
        self._written = self.active

    def start_step(self, ids: torch.Tensor) -> None:
        """Make the residuals of the mapped rows among `ids` (the batch's tokens) trainable for one step."""
        if self.delta is None:
            return
        self.slot[self.active] = -1
        positions = self.position[ids.unique()]
        self.active = positions[positions >= 0]
        self.slot[self.active] = torch.arange(self.active.numel())
        empty = self.active.numel() == 0  # a batch of copied tokens only: nothing to train, nothing to index
        self.step_delta = None if empty else torch.zeros(self.active.numel(), self.base.shape[1], requires_grad=True)

    def finish_step(self) -> None:
        """Set delta's gradient [N, d] from the step's: its active rows, zero elsewhere (before optimizer.step)."""
        if self.delta is None or self._grad is None or self.step_delta is None:
            return
        self._grad[self._written] = 0.0  # one [N, d] buffer for every step: only the last step's rows are non-zero
        self._written = self.active
        if self.step_delta.grad is not None:
            self._grad[self.active] = self.step_delta.grad * self.delta_scale[self.active]
        self.delta.grad = self._grad

    def on_map(self, position: torch.Tensor) -> torch.Tensor:
        """bool, position's shape: which entries (indices into the mapped rows, -1 for other rows) the map writes."""
        inside = position >= 0
        return inside & self.follows[position.clamp(min=0)] if self.keeps_some else inside

    def reads(self, at: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per feature, in A's block order, its table and the rows of it that the mapped rows `at` read: the
        estimates (`base`, `at`), then each lookup's table and `index[at]` (its zero row where a feature is missing)."""
        lookups = [(table, lookup[at]) for table, lookup in zip(self.tables, self.indices, strict=True)]
        return [(self.base, at), *lookups]

    def mapped(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows [*ids.shape, d]: A @ f + b for the mapped ids, differentiable in A, b and this step's residuals (whose
        values are already in the matrix: the hook only needs their gradient path); 0 for the other ids."""
        index = self.position[ids]
        rows = self.b
        at = index.clamp(min=0)
        for block, (table, read) in zip(self.blocks, self.reads(at), strict=True):
            rows = rows + table[read] @ self.A[:, block].T
        if self.keeps_some:
            rows = torch.where(self.follows[at].unsqueeze(-1), rows, self.base[at])
        if self.step_delta is not None:
            rows = rows + self.step_delta[self.slot[at].clamp(min=0)] * (self.slot[at] >= 0).unsqueeze(-1)
        return rows * (index >= 0).unsqueeze(-1)

    @torch.no_grad()
    def materialize(self) -> None:
        """Write A @ f + b into the mapped rows of the matrix (after each optimizer step)."""
        rows = torch.addmm(self.b, self.base, self.A[:, self.blocks[0]].T)
        for block, table, lookup in zip(self.blocks[1:], self.tables, self.indices, strict=True):
            rows += (table @ self.A[:, block].T)[lookup]
        if self.keeps_some:
            rows[~self.follows] = self.base[~self.follows]
        if self.delta is not None:
            rows += self.delta * self.delta_scale if self.keeps_some else self.delta
        self.weight[self.rows] = rows

    def feature_products(self, grad_rows: torch.Tensor) -> torch.Tensor:
        """grad_rows [T, N] @ F [N, d + k...] without building F: the lookups' parts are summed per table row first."""
        parts = [grad_rows @ self.base]
        for table, lookup in zip(self.tables, self.indices, strict=True):
            per_row = grad_rows.new_zeros(grad_rows.shape[0], table.shape[0]).index_add_(1, lookup, grad_rows)
            parts.append(per_row @ table)
        return torch.cat(parts, dim=1)


class AffineHead(torch.autograd.Function):
    """logits [T, V] = hidden [T, d] @ weight.T; backward: d hidden in full, dA and db of the map `affine`, and the
    gradient of this step's residuals when `delta` (`affine.step_delta`, [R, d]) is passed.

    `weight` must hold the materialised rows (`affine.materialize()`); it gets no gradient itself.
    """

    @staticmethod
    def forward(
        hidden: torch.Tensor,
        weight: torch.Tensor,
        A: torch.Tensor,
        b: torch.Tensor,
        affine: AffineRows,
        delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return hidden @ weight.T

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        hidden, weight, _A, _b, affine = inputs[:5]
        ctx.save_for_backward(hidden, weight)
        ctx.affine = affine

    @staticmethod
    def backward(ctx: Any, grad_logits: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight = ctx.saved_tensors
        affine: AffineRows = ctx.affine
        grad_hidden = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_A = grad_b = grad_delta = None
        grad_rows = grad_logits[:, affine.rows]  # [T, N]
        if len(ctx.needs_input_grad) > 5 and ctx.needs_input_grad[5]:
            grad_delta = grad_rows[:, affine.active].T @ hidden
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            if affine.keeps_some:
                grad_rows = grad_rows * affine.follows  # the rows the map leaves alone give it no gradient
            grad_A = hidden.T @ affine.feature_products(grad_rows)
            grad_b = hidden.T @ grad_rows.sum(dim=1)
        return grad_hidden, None, grad_A, grad_b, None, grad_delta  # without `delta` autograd drops the last None


def embedding_scale(model: Any) -> float:
    """The factor the input embedding module applies to its rows (Gemma multiplies by sqrt(d); most models by 1)."""
    module = model.get_input_embeddings()
    weight = module.weight
    row = int(weight.detach().abs().sum(dim=1).argmax())
    with torch.no_grad():
        out = module(torch.tensor([row]))[0].float()
    reference = weight.detach()[row].float()
    scale = float((out @ reference) / (reference @ reference))
    if not torch.allclose(out, reference * scale, rtol=1e-3, atol=1e-5):
        raise InputError(
            "--fit affine needs an input embedding that is a (scaled) row lookup, and this model's is not.",
            "Heal with --fit rows.",
        )
    return scale


def install_input_hook(model: Any, maps: AffineRows, scale: float) -> torch.utils.hooks.RemovableHandle:
    """Route the input rows' gradient to A and b without changing the embedding module's output."""

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor | None:
        ids = args[0] if args else kwargs.get("input")
        if not torch.is_grad_enabled() or ids is None:
            return None
        rows = maps.mapped(ids)
        return output + scale * (rows - rows.detach()).to(output.dtype)

    return model.get_input_embeddings().register_forward_hook(hook, with_kwargs=True)
