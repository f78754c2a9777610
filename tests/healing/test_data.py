"""Healing data: the held-out tail never overlaps training, sequences cover exactly their bytes, fair turns."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenadapt.errors import InputError
from tokenadapt.healing.data import Sequence, make_sequences, split_text, take_turns


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=400), st.integers(min_value=1, max_value=64))
def test_split_is_disjoint_and_loses_nothing(text: str, held_out: int) -> None:
    size = len(text.encode("utf-8"))
    if size < 2 * held_out:
        with pytest.raises(InputError, match="held-out-bytes"):
            split_text(text, "t", held_out, 0)
        return
    parts = split_text(text, "t", held_out, 0)
    assert parts.train + parts.held_out == text  # adjacent, no byte in both
    assert held_out <= len(parts.held_out.encode("utf-8")) < held_out + 4  # moved back to a character start


def test_max_train_bytes_keeps_the_part_next_to_the_held_out_tail() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    parts = split_text(text, "t", held_out_bytes=500, max_train_bytes=1000)
    assert len(parts.train.encode()) == 1000
    assert text.endswith(parts.train + parts.held_out)


def test_sequences_cover_their_bytes_exactly(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "Tokenizers split text into tokens. これは日本語のテストです。 " * 30
    sequences = make_sequences(byte_level_tokenizer, text, 0, length=16)
    assert "".join(s.text for s in sequences) == text
    for sequence in sequences:
        assert len(sequence.ids) <= 16
        assert sequence.byte_ends[-1] == len(sequence.text.encode("utf-8"))
        again = byte_level_tokenizer(sequence.text, add_special_tokens=False).input_ids
        assert len(again) >= 1
    all_ids = np.concatenate([s.ids for s in sequences])
    assert all_ids.tolist() == byte_level_tokenizer(text, add_special_tokens=False).input_ids


def test_texts_take_equal_turns_and_repeat_when_exhausted() -> None:
    def seq(index: int, n: int) -> Sequence:
        return Sequence(index, np.full(2, n, dtype=np.int64), np.arange(1, 3), f"{index}-{n}")

    per_text = [[seq(0, n) for n in range(5)], [seq(1, 0)]]
    drawn = list(itertools.islice(take_turns(per_text, seed=3), 10))
    assert [s.text_index for s, _ in drawn] == [0, 1] * 5
    assert sorted(s.text for s, _ in drawn if s.text_index == 0) == [f"0-{n}" for n in range(5)]
    assert [p for s, p in drawn if s.text_index == 1] == [0, 1, 2, 3, 4]
    assert [s.text for s, _ in itertools.islice(take_turns(per_text, seed=3), 10)] == [s.text for s, _ in drawn]
