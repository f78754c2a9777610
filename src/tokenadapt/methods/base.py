"""What every embedding-initialisation method receives and returns.

A method is a pure function `(old rows, inputs) -> Estimate`. `old` is one embedding matrix of the original model
(input embeddings, or the untied output head, or a bias as a [V, 1] matrix), so the same method serves all of them.
`MethodInputs` holds everything computed once per transplant (decompositions, auxiliary embeddings, neighbours,
text alignments, FOCUS weights, OMP codes); the pipeline fills only what the method's `needs` names, so `mean`
never loads an embedder. Anything expensive is computed there once, not per matrix: a method is called for the
input matrix, the untied head and the bias, possibly in column blocks, so it should be a cheap sparse product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from tokenadapt.neighbors import Neighbors
from tokenadapt.options import TransplantOptions
from tokenadapt.vocab.decompose import Decomposition

T = TypeVar("T")

Need = Literal["decomposition", "aux", "neighbors", "text", "focus", "donor"]


@dataclass(frozen=True)
class SparseCombination:
    """Per new token, a sparse combination of old rows: `matrix` is a sparse COO [U, V] of weights over old ids,
    `found` [U] bool says which rows have one, `score` [U] is a per-token figure the method explains (occurrences
    in a text, a reconstruction residual, ...).

        >>> combo = SparseCombination(torch.eye(2).to_sparse(), torch.tensor([True, True]), torch.ones(2))
        >>> torch.sparse.mm(combo.matrix, old_rows)   # [U, d]
    """

    matrix: torch.Tensor
    found: torch.Tensor
    score: torch.Tensor


@dataclass(frozen=True)
class NumberPlan:
    """Number tokens among the U estimated tokens and their digit-based estimate (see `methods.numbers`).

    `rows` [N] are positions in `new_ids`; `estimate` a sparse COO [N, V] of weights over old rows; `share` how much
    of the final row the digit estimate takes (the rest is the method's own estimate).
    """

    rows: torch.Tensor
    estimate: torch.Tensor
    share: float


@dataclass(frozen=True)
class MethodInputs:
    """Inputs for estimating U new tokens from an old vocabulary of V tokens (a = auxiliary dimension).

    - `new_ids` [U]: the new-vocabulary ids being estimated (for reports).
    - `old_candidates` [V] bool: old rows that are real, non-special tokens; means and neighbours use only these.
    - `new_byte_lengths` [U], `old_byte_lengths` [V] float: bytes each token stands for.
    - `old_whitespace` [V] bool: the old token stands for whitespace only (None: unknown, nothing is dropped).
    - `forms` ([U, 4] of the new tokens, [V, 4] of the old): word start and case (`vocab.forms`), computed with the
      neighbours (for the search and the report).
    - `decomposition`: old pieces of each new token (needs "decomposition").
    - `aux_new` [U, a], `aux_new_ok` [U], `aux_old` [V, a], `aux_old_ok` [V]: L2-normalised auxiliary embeddings
      (needs "aux").
    - `neighbors`: top-k old neighbours of each new token in auxiliary space (needs "neighbors").
    - `text_counts`: byte-overlap counts of each new token with old tokens in a text, tokenized both ways
      (needs "text"; `score` = occurrences).
    - `focus`: FOCUS sparsemax weights over old rows of shared tokens (needs "focus"; `score` = support size).
    - `omp`: OMP codes over shared anchor tokens, found in a donor model (needs "donor"; `score` = relative
      residual in donor space).
    - `numbers`: the number-token plan applied on top of any method (`--numbers auto`), or None.
    - `notes`: what the report should warn about (e.g. new tokens a text never showed).
    - `aux_report`: what the auxiliary embedding and the neighbour search computed and what came from the cache.
    """

    new_ids: np.ndarray
    old_candidates: torch.Tensor
    new_byte_lengths: torch.Tensor
    old_byte_lengths: torch.Tensor
    options: TransplantOptions
    old_whitespace: torch.Tensor | None = None
    forms: tuple[torch.Tensor, torch.Tensor] | None = None
    decomposition: Decomposition | None = None
    aux_new: torch.Tensor | None = None
    aux_new_ok: torch.Tensor | None = None
    aux_old: torch.Tensor | None = None
    aux_old_ok: torch.Tensor | None = None
    neighbors: Neighbors | None = None
    text_counts: SparseCombination | None = None
    focus: SparseCombination | None = None
    omp: SparseCombination | None = None
    numbers: NumberPlan | None = None
    notes: tuple[str, ...] = ()
    aux_report: dict[str, Any] | None = None
    # values derived from these inputs alone (not init: a `dataclasses.replace` copy starts empty)
    _derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def count(self) -> int:
        return int(self.new_ids.shape[0])

    def derived(self, name: str, compute: Callable[[], T]) -> T:
        """`compute()` once per inputs object: a method's weights depend on the inputs alone, and the method runs
        once per column block of each matrix and once more for the prior calibration."""
        if name not in self._derived:
            self._derived[name] = compute()
        return self._derived[name]


@dataclass(frozen=True)
class Estimate:
    """New rows [U, d] and how many rows took each path (e.g. {"hybrid": 80000, "local-only": 900})."""

    rows: torch.Tensor
    paths: dict[str, int]


MethodFn = Callable[[torch.Tensor, MethodInputs], Estimate]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its CLI name, function, the inputs it needs, and a one-line summary."""

    name: str
    fn: MethodFn
    needs: frozenset[Need]
    summary: str
    # each output column depends only on the same column of `old`, so a matrix can be estimated in column blocks
    column_separable: bool = True
    # rows the method cannot place take the `--fallback` method's estimate, whose needs are added to `needs`
    uses_fallback: bool = False
