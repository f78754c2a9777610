"""Healing data: each text cut into a training part and a held-out tail, and the training part into sequences.

The held-out slice of each text is its last `held_out_bytes` bytes (cut at a character boundary); training uses
only what comes before it, so the two never overlap. Built-in texts heal on their dev split by default, which keeps
their test split (what `tokenadapt eval` and the benchmark score) unseen as well.

    >>> parts = split_text("a b c " * 100, "demo", held_out_bytes=60, max_train_bytes=0)
    >>> len(parts.held_out.encode()), parts.train + parts.held_out == "a b c " * 100
    (60, True)
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenadapt.errors import InputError
from tokenadapt.evaluation.scoring import encode_with_byte_ends
from tokenadapt.zoo.texts import load_text


@dataclass(frozen=True)
class HealText:
    """One text, cut into a training part and the held-out tail after it."""

    name: str
    split: str
    train: str
    held_out: str
    source: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """What the report records: sizes and sha256 of both parts, and where the text came from."""
        return {
            "name": self.name,
            "split": self.split,
            "train_bytes": len(self.train.encode("utf-8")),
            "held_out_bytes": len(self.held_out.encode("utf-8")),
            "train_sha256": hashlib.sha256(self.train.encode("utf-8")).hexdigest(),
            "held_out_sha256": hashlib.sha256(self.held_out.encode("utf-8")).hexdigest(),
            "source": self.source,
        }


@dataclass(frozen=True)
class Sequence:
    """One training sequence: token ids of text `text_index` and the bytes they cover.

    `byte_ends[i]` is where token i ends, relative to the sequence's first byte; `text` is exactly those bytes
    (a teacher with another tokenizer scores the same text).
    """

    text_index: int
    ids: np.ndarray  # int64 [T]
    byte_ends: np.ndarray  # int64 [T]
    text: str


def split_text(text: str, name: str, held_out_bytes: int, max_train_bytes: int, split: str = "all") -> HealText:
    """Cut `text` into training part and held-out tail (its last `held_out_bytes` bytes, on a character boundary).

    `max_train_bytes` keeps the training part's last N bytes (those nearest the held-out tail; 0 keeps all).
    """
    data = text.encode("utf-8")
    if len(data) < 2 * held_out_bytes:
        raise InputError(
            f"The text {name} has {len(data)} bytes; healing holds out its last {held_out_bytes} and needs at least "
            "as many again to train on.",
            "Pass a longer text, or lower --held-out-bytes.",
        )
    cut = len(data) - held_out_bytes
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # never cut inside a UTF-8 character
        cut -= 1
    train = data[:cut]
    if max_train_bytes and len(train) > max_train_bytes:
        start = len(train) - max_train_bytes
        while start < len(train) and (train[start] & 0xC0) == 0x80:
            start += 1
        train = train[start:]
    return HealText(name, split, train.decode("utf-8"), data[cut:].decode("utf-8"), {})


def load_heal_texts(specs: list[str], split: str, held_out_bytes: int, max_train_bytes: int) -> list[HealText]:
    """Each built-in text (its `split`) or local file/directory (all of it), cut by `split_text`."""
    if not specs:
        raise InputError("heal needs a text to train on.", "Add --text NAME (e.g. wiki-en) or --text PATH.")
    texts = []
    for spec in specs:
        corpus = load_text(spec, split="all" if Path(spec).exists() else split)
        parts = split_text(corpus.text, corpus.name, held_out_bytes, max_train_bytes, corpus.split)
        texts.append(HealText(parts.name, parts.split, parts.train, parts.held_out, dict(corpus.source)))
    return texts


def make_sequences(tokenizer: Any, text: str, text_index: int, length: int) -> list[Sequence]:
    """Cut `text`'s tokens into consecutive sequences of at most `length` tokens (the last may be shorter).

    A cut never falls between two tokens that end on the same character (pieces of one UTF-8 character), so every
    sequence's bytes decode on their own.
    """
    ids, byte_ends = encode_with_byte_ends(tokenizer, text)
    data = text.encode("utf-8")
    token_ids = np.asarray(ids, dtype=np.int64)
    sequences: list[Sequence] = []
    start = 0
    while start < len(token_ids):
        stop = min(start + length, len(token_ids))
        while start + 1 < stop < len(token_ids) and byte_ends[stop - 1] == byte_ends[stop]:
            stop -= 1
        first_byte = int(byte_ends[start - 1]) if start else 0
        last_byte = int(byte_ends[stop - 1])
        if stop - start >= 2 and last_byte > first_byte:
            sequences.append(
                Sequence(
                    text_index=text_index,
                    ids=token_ids[start:stop],
                    byte_ends=byte_ends[start:stop] - first_byte,
                    text=data[first_byte:last_byte].decode("utf-8", errors="replace"),
                )
            )
        start = stop
    return sequences


def take_turns(per_text: list[list[Sequence]], seed: int) -> Iterator[tuple[Sequence, int]]:
    """(sequence, pass) forever: the texts take turns, each walking its own sequences in a seeded random order.

    Texts weigh equally whatever their size (a small text is repeated sooner); `pass` counts how many times the
    text that gave the sequence has been gone through before.

    >>> seqs = [[Sequence(0, np.zeros(2, np.int64), np.zeros(2, np.int64), "a")], []]
    >>> [p for _, p in itertools.islice(take_turns(seqs, 0), 3)]
    [0, 1, 2]
    """
    rng = np.random.default_rng(seed)
    active = [i for i, sequences in enumerate(per_text) if sequences]
    if not active:
        raise InputError("No training sequences: every text is too short.", "Pass longer texts.")
    orders = {i: list(rng.permutation(len(per_text[i]))) for i in active}
    passes = dict.fromkeys(active, 0)
    for turn in itertools.count():
        index = active[turn % len(active)]
        if not orders[index]:
            passes[index] += 1
            orders[index] = list(rng.permutation(len(per_text[index])))
        yield per_text[index][orders[index].pop(0)], passes[index]
