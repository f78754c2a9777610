"""Decide, for every id of the new vocabulary, where its embedding comes from.

Shared tokens keep their embeddings; special tokens inherit by role; everything else is left for a method to
estimate. Matching is by canonical bytes (default) or, to reproduce the paper's code, by raw vocabulary string.

    >>> alignment = align_vocabularies(old_vocab, new_vocab, old_rows=49152)
    >>> alignment.counts()
    {'exact': 39213, 'canonical': 0, 'special-exact': 2, 'special-role': 1, ..., 'estimated': 112699}
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tokenadapt.vocab.canonical import Vocabulary
from tokenadapt.vocab.roles import role_candidates


class Assignment(enum.IntEnum):
    """Where a new row comes from. The value is stored per id in `Alignment.kinds`."""

    EXACT = 0  # same string and same bytes in both vocabularies: copied
    CANONICAL = 1  # same bytes spelled differently (Ġ vs ▁, <0xNN> vs a byte): copied
    SPECIAL_EXACT = 2  # the same special-token string exists in the old vocabulary: copied
    SPECIAL_ROLE = 3  # a special token matched by role (bos, eos, turn_end, ...): copied
    SPECIAL_UNMATCHED = 4  # a special token with no counterpart: mean of the old special rows
    ESTIMATED = 5  # a new token: estimated by the chosen method
    HOLE = 6  # an id no token uses: mean of the old rows

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


COPIED = (Assignment.EXACT, Assignment.CANONICAL, Assignment.SPECIAL_EXACT, Assignment.SPECIAL_ROLE)


class MatchMode(str, enum.Enum):
    BYTES = "bytes"  # canonical bytes: right across tokenizer families
    STRING = "string"  # raw vocabulary strings, as the TokenAdapt paper's code does


@dataclass(frozen=True)
class SpecialMatch:
    new_token: str
    old_token: str | None
    how: str  # "exact", a role name such as "eos" or "declared:bos", or "unmatched"


@dataclass(frozen=True)
class Alignment:
    """Per new id: its `Assignment` kind and, for copies, the old id it copies (`source`, -1 otherwise)."""

    kinds: np.ndarray  # int8 [V_new]
    source: np.ndarray  # int64 [V_new]
    specials: tuple[SpecialMatch, ...] = field(default=())

    def ids_of(self, *kinds: Assignment) -> np.ndarray:
        """New ids with any of the given kinds, ascending."""
        return np.flatnonzero(np.isin(self.kinds, [int(k) for k in kinds]))

    @property
    def copied_ids(self) -> np.ndarray:
        return self.ids_of(*COPIED)

    @property
    def estimated_ids(self) -> np.ndarray:
        return self.ids_of(Assignment.ESTIMATED)

    def counts(self) -> dict[str, int]:
        values = np.bincount(self.kinds.astype(np.int64), minlength=len(Assignment))
        return {kind.label: int(values[kind]) for kind in Assignment}


def align_vocabularies(old: Vocabulary, new: Vocabulary, old_rows: int, mode: MatchMode = MatchMode.BYTES) -> Alignment:
    """Align `new` to `old`; only old ids below `old_rows` (the embedding matrix's rows) can be copied."""
    kinds = np.full(new.size, int(Assignment.HOLE), dtype=np.int8)
    source = np.full(new.size, -1, dtype=np.int64)
    specials: list[SpecialMatch] = []
    new_roles_by_id: dict[int, list[str]] = {}
    for role, ids in new.roles.items():
        for token_id in ids:
            new_roles_by_id.setdefault(token_id, []).append(role.removeprefix("declared:"))

    def usable(old_id: int | None) -> bool:
        return old_id is not None and 0 <= old_id < old_rows

    for new_id, token in enumerate(new.tokens):
        if token is None:
            continue
        if new_id in new.special_ids:
            kind, old_id, how = _match_special(old, token, new_roles_by_id.get(new_id, []), usable)
            specials.append(SpecialMatch(token, old.tokens[old_id] if old_id >= 0 else None, how))
            kinds[new_id], source[new_id] = kind, old_id
            continue
        data = new.canonical[new_id]
        same_string = old.id_by_string.get(token)
        same_bytes = old.id_by_bytes.get(data) if data and mode is MatchMode.BYTES else None
        if same_string is not None and usable(same_string) and old.canonical[same_string] == data:
            kinds[new_id], source[new_id] = Assignment.EXACT, same_string
        elif same_bytes is not None and usable(same_bytes):
            kinds[new_id], source[new_id] = Assignment.CANONICAL, same_bytes
        else:
            kinds[new_id] = Assignment.ESTIMATED
    return Alignment(kinds=kinds, source=source, specials=tuple(specials))


def _match_special(
    old: Vocabulary, token: str, roles: list[str], usable: Callable[[int | None], bool]
) -> tuple[int, int, str]:
    same = old.id_by_string.get(token)
    if same is not None and usable(same):
        return int(Assignment.SPECIAL_EXACT), same, "exact"
    for how, old_id in role_candidates(old.roles, roles):
        if usable(old_id):
            return int(Assignment.SPECIAL_ROLE), old_id, how
    return int(Assignment.SPECIAL_UNMATCHED), -1, "unmatched"
