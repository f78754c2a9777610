"""Word-start and case features of tokens, for the form-aware neighbour search."""

from __future__ import annotations

from tokenadapt.vocab.forms import token_forms


def test_token_forms_read_word_start_and_first_cased_letter() -> None:
    canonical = [
        b" The",
        b"the",
        b" 42",
        b"\n",
        b"\xc3\x89t\xc3\xa9",
        b"-J",
        "。".encode(),
        b"\xe2\x80",
        None,
        b"123abc",
    ]
    expected = [
        [1, 0, 1, 0],  # " The": word start, upper
        [0, 1, 0, 1],  # "the": inside a word, lower
        [1, 0, 0, 0],  # " 42": word start, no case
        [0, 1, 0, 0],  # newline: no space, no case
        [0, 1, 1, 0],  # "Été": the first cased letter decides
        [0, 1, 1, 0],  # "-J": punctuation before the letter
        [0, 1, 0, 0],  # CJK full stop: no case
        [0, 1, 0, 0],  # partial UTF-8: no letter can be read
        [0, 0, 0, 0],  # no bytes: no features
        [0, 1, 0, 1],  # digits first, then a lower-case letter
    ]
    assert token_forms(canonical).tolist() == [[float(v) for v in row] for row in expected]
