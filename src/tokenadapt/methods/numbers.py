"""Number tokens: a digit-based estimate applied on top of any method (`--numbers auto`).

Digits are where transplants break: SmolLM2 splits numbers into single digits, Llama-3 into runs of up to three, so
all 1,100 of Llama-3's two- and three-digit tokens are new. Their auxiliary embeddings say little (a sentence
embedder puts "957" near any number), and hybrid's piece weights treat "9", "5" and "7" as interchangeable.

A number token (ASCII digits, optionally one leading space) that is being estimated is spelled with the old
vocabulary (its pieces p_1..p_n, usually the single digits) and given a position-aware mean of their rows,

    w_i      = decay^(i-1) / sum_j decay^(j-1)             (decay < 1: leading digits count more)
    e_num(t) = sum_i w_i E_old[p_i]
    e(t)     = (1 - share) e_method(t) + share e_num(t)

Worked example, decay 0.5, share 0.5: "957" -> pieces "9", "5", "7", w = (4/7, 2/7, 1/7), and
e = 0.5 e_method + 0.5 (4/7 E["9"] + 2/7 E["5"] + 1/7 E["7"]). The leading digit carries a number's magnitude and is
what the old model would have predicted first, which is what a tied output row scores.

The report's method paths count the rows that took it as "numbers" (they are also counted under the method's own path).

Measured, and therefore off by default (`--numbers auto` turns it on): SmolLM2-135M onto Llama-3 with hybrid, the
1,100 two- and three-digit tokens only, bits per byte on the first 20,000 bytes of wiki-en / code-py (test splits):
off 1.1629 / 1.6699; share 0.5 with decay 0.5 (leading digits first) 1.1704 / 1.6802, uniform 1.1675 / 1.6803,
decay 2 (last digit first) 1.1666 / 1.6813. The digit estimate does what it is meant to on the output side (the
summed loss of predicting a number token falls from 350 to 281-319 nats on wiki-en) but costs more on the input side
(the token after a number: 176 -> 213-256 nats) and elsewhere (number rows that look like digits draw probability
where a digit is plausible). In a tied model the two sides cannot be separated; an untied head is where it may pay.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from tokenadapt.methods.base import Estimate, MethodInputs, NumberPlan
from tokenadapt.methods.combine import sparse_matrix, sparse_rows
from tokenadapt.vocab.canonical import Vocabulary

NUMBER = re.compile(rb" ?[0-9]+")
DECAY = 0.5  # weight ratio of each digit to the one before it
SHARE = 0.5  # share of the digit estimate in a number token's row


def is_number(data: bytes | None) -> bool:
    """True for all-digit tokens with at most one leading space.

    >>> is_number(b" 2024"), is_number(b"957"), is_number(b"1.5"), is_number(None)
    (True, True, False, False)
    """
    return data is not None and NUMBER.fullmatch(data) is not None


def number_plan(
    old: Vocabulary,
    new: Vocabulary,
    new_ids: np.ndarray,
    old_candidates: torch.Tensor,
    decay: float = DECAY,
    share: float = SHARE,
) -> NumberPlan:
    """The number tokens among `new_ids` [U] and their digit estimate over the old rows (see the module docstring).

    Only the number tokens are spelled (a few thousand at most), never the whole vocabulary. A token whose pieces
    are not all usable old rows (`old_candidates`) is left to the method.
    """
    positions: list[int] = []
    rows: list[int] = []
    cols: list[int] = []
    weights: list[float] = []
    usable = old_candidates.numpy()
    for position, new_id in enumerate(new_ids.tolist()):
        data = new.canonical[new_id]
        if not is_number(data):
            continue
        assert data is not None
        pieces = old.encode_bytes(data)
        if not pieces or not all(p < usable.size and usable[p] for p in pieces):
            continue
        raw = decay ** np.arange(len(pieces), dtype=np.float64)
        positions.append(position)
        rows += [len(positions) - 1] * len(pieces)
        cols += pieces
        weights += (raw / raw.sum()).tolist()
    estimate = sparse_matrix(
        torch.tensor(rows, dtype=torch.long),
        torch.tensor(cols, dtype=torch.long),
        torch.tensor(weights, dtype=torch.float32),
        (len(positions), int(usable.size)),
    )
    return NumberPlan(rows=torch.tensor(positions, dtype=torch.long), estimate=estimate, share=share)


def apply_numbers(old: torch.Tensor, inputs: MethodInputs, estimate: Estimate) -> Estimate:
    """`estimate` with its number-token rows mixed with the digit estimate (unchanged without a plan)."""
    plan = inputs.numbers
    if plan is None or plan.rows.numel() == 0:
        return estimate
    rows = estimate.rows.clone()
    digits = sparse_rows(plan.estimate, old)
    rows[plan.rows] = (1 - plan.share) * rows[plan.rows] + plan.share * digits
    return Estimate(rows, {**estimate.paths, "numbers": int(plan.rows.numel())})
