"""Spell each new token with the old vocabulary: the "subtokens" the local and subword-mean methods combine.

    >>> d = decompose(old_vocab, new_vocab, new_ids=np.array([5012]), old_rows=49152)
    >>> d.pieces, d.mask                     # new token " transplant" -> old " trans", "plant"
    (tensor([[1203, 9918]]), tensor([[True, True]]))

Pieces come from `Vocabulary.encode_bytes`, so a token is decomposed by the bytes it stands for, never by a
re-encoding of its decoded string (which would add SentencePiece dummy prefixes and lose word-start markers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenadapt.vocab.canonical import Vocabulary


@dataclass(frozen=True)
class Decomposition:
    """Padded old-vocabulary pieces of U tokens: `pieces` [U, L] (0 where padded), `mask` [U, L] bool."""

    pieces: torch.Tensor
    mask: torch.Tensor


def decompose(
    old: Vocabulary, new: Vocabulary, new_ids: np.ndarray, old_rows: int, progress: bool = False
) -> Decomposition:
    """Old-vocabulary pieces of the new tokens `new_ids` (only pieces with an embedding row are kept)."""
    spelled: list[list[int]] = []
    for new_id in tqdm(new_ids.tolist(), desc="decompose", unit="tok", disable=not progress, mininterval=1.0):
        data = new.canonical[new_id]
        pieces = old.encode_bytes(data) if data else []
        if any(p >= old_rows or p in old.special_ids for p in pieces):
            pieces = []  # a piece without a usable row would silently bias the estimate
        spelled.append(pieces)
    width = max((len(p) for p in spelled), default=0) or 1
    pieces_array = np.zeros((len(spelled), width), dtype=np.int64)
    mask_array = np.zeros((len(spelled), width), dtype=bool)
    for row, pieces in enumerate(spelled):
        pieces_array[row, : len(pieces)] = pieces
        mask_array[row, : len(pieces)] = True
    return Decomposition(pieces=torch.from_numpy(pieces_array), mask=torch.from_numpy(mask_array))
