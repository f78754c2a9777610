"""What every embedding-initialisation method receives and returns.

A method is a pure function `(old rows, inputs) -> Estimate`. `old` is one embedding matrix of the original model
(input embeddings, or the untied output head, or a bias as a [V, 1] matrix), so the same method serves all of them.
`MethodInputs` holds everything computed once per transplant (decompositions, auxiliary embeddings, neighbours);
the pipeline fills only what the method's `needs` names, so `mean` never loads an embedder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tokenadapt.neighbors import Neighbors
from tokenadapt.options import TransplantOptions
from tokenadapt.vocab.decompose import Decomposition

Need = Literal["decomposition", "aux", "neighbors"]


@dataclass(frozen=True)
class MethodInputs:
    """Inputs for estimating U new tokens from an old vocabulary of V tokens (a = auxiliary dimension).

    - `new_ids` [U]: the new-vocabulary ids being estimated (for reports).
    - `old_candidates` [V] bool: old rows that are real, non-special tokens; means and neighbours use only these.
    - `new_byte_lengths` [U], `old_byte_lengths` [V] float: bytes each token stands for.
    - `decomposition`: old pieces of each new token (needs "decomposition").
    - `aux_new` [U, a], `aux_new_ok` [U], `aux_old` [V, a], `aux_old_ok` [V]: L2-normalised auxiliary embeddings
      (needs "aux").
    - `neighbors`: top-k old neighbours of each new token in auxiliary space (needs "neighbors").
    """

    new_ids: np.ndarray
    old_candidates: torch.Tensor
    new_byte_lengths: torch.Tensor
    old_byte_lengths: torch.Tensor
    options: TransplantOptions
    decomposition: Decomposition | None = None
    aux_new: torch.Tensor | None = None
    aux_new_ok: torch.Tensor | None = None
    aux_old: torch.Tensor | None = None
    aux_old_ok: torch.Tensor | None = None
    neighbors: Neighbors | None = None

    @property
    def count(self) -> int:
        return int(self.new_ids.shape[0])


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
