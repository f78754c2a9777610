"""Word start and letter case of each token: what an uncased, whitespace-blind auxiliary embedder cannot see.

all-MiniLM-L6-v2 gives " Verzeichnis", "verzeichnis" and "Verzeichnis" one vector, so the global estimate's nearest
old tokens are as likely to be word starts as word middles, capitalised as not. The neighbour search can prefer old
tokens of the new token's own form (`neighbors.top_k_neighbors`, `--neighbor-form`); these are the features it
compares, one-hot per token:

    column 0: starts with a space (a word start; SentencePiece's "▁" is a space in canonical bytes)
    column 1: does not
    column 2: its first cased letter is upper case
    column 3: its first cased letter is lower case

A token with no bytes has no features; a token with no cased letter ("123", "。", "\\n") has no case features.

    >>> token_forms([b" The", b"ing", b"42", None]).tolist()
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FORM_FEATURES = 4
# what a shared form is worth in the neighbour search, per column: a shared case counts a hair more than a shared
# word start: of two ids behind one vector that each share one form, the one of the same case comes first
# (dev split, SmolLM2 -> Qwen2: 1.4857 this way, 1.4876 the other way, 1.4863 by lowest id; docs/design.md)
FORM_WEIGHTS = torch.tensor([1.0, 1.0, 1.01, 1.01])


def token_forms(canonical: Sequence[bytes | None]) -> torch.Tensor:
    """[V, 4] float one-hot form features of each token's canonical bytes (see the module docstring)."""
    rows: list[int] = []
    columns: list[int] = []
    for token_id, data in enumerate(canonical):  # one pass of str methods; the tensor is written once at the end
        if not data:
            continue
        rows.append(token_id)
        columns.append(0 if data.startswith(b" ") else 1)
        letter = next((c for c in data.decode("utf-8", errors="ignore") if c.isupper() or c.islower()), None)
        if letter is not None:
            rows.append(token_id)
            columns.append(2 if letter.isupper() else 3)
    forms = torch.zeros((len(canonical), FORM_FEATURES), dtype=torch.float32)
    forms[torch.tensor(rows, dtype=torch.long), torch.tensor(columns, dtype=torch.long)] = 1.0
    return forms
