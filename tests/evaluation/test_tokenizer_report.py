from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.conftest import train_byte_level, train_metaspace
from tokenadapt.evaluation.tokenizer_report import (
    renyi_efficiency,
    text_stats,
    token_premium,
    tokenizer_report,
    unigram_entropy,
    vocabulary_overlap,
)
from tokenadapt.zoo.texts import TextCorpus


def word_level() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def test_text_stats_match_a_hand_computation() -> None:
    corpus = TextCorpus("t", "all", ("a b a", "c"), {})  # text "a b a\n\nc": 8 bytes, 4 words, 4 tokens
    stats = text_stats("words", word_level(), corpus)
    assert (stats.bytes, stats.words, stats.tokens) == (8, 4, 4)
    assert stats.bytes_per_token == 2.0 and stats.tokens_per_word == 1.0 and stats.tokens_per_byte == 0.5
    # counts a=2, b=1, c=1 over a vocabulary of 4
    assert stats.unigram_entropy_bits == pytest.approx(1.5)
    renyi = math.log2(0.5**2.5 + 2 * 0.25**2.5) / (1 - 2.5)
    assert stats.renyi_efficiency == pytest.approx(renyi / 2)
    assert stats.vocab_used == 0.75
    assert stats.encode_mb_per_s > 0


def test_entropy_and_renyi_edge_cases() -> None:
    assert unigram_entropy(np.array([7, 0, 0])) == 0.0
    assert renyi_efficiency(np.array([1, 1, 1, 1, 1, 1, 1, 1]), vocab_size=8) == pytest.approx(1.0)
    assert renyi_efficiency(np.array([1, 1]), vocab_size=8) == pytest.approx(1 / 3)


def test_token_premium_divides_by_english() -> None:
    corpus = TextCorpus("t", "all", ("a",), {})
    base = text_stats("tok", word_level(), corpus)
    stats = [
        dataclasses.replace(base, text="debref-en", tokens=100),
        dataclasses.replace(base, text="debref-de", tokens=150),
        dataclasses.replace(base, text="wiki-en", tokens=7),
        dataclasses.replace(base, tokenizer="other", text="debref-de", tokens=10),
    ]
    assert token_premium(stats) == {"tok": {"en": 1.0, "de": 1.5}}


def test_overlap_by_bytes_finds_what_strings_miss() -> None:
    byte_level, metaspace = train_byte_level(), train_metaspace()
    same = vocabulary_overlap(byte_level, byte_level)
    assert same["exact"] == same["bytes"] == len(byte_level) - 3  # three special tokens
    across = vocabulary_overlap(byte_level, metaspace)
    assert across["bytes"] > across["exact"]


def test_report_on_local_tokenizers_and_text(tmp_path: Path) -> None:
    tok_dir = tmp_path / "tok"
    train_byte_level().save_pretrained(str(tok_dir))
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    report = tokenizer_report([str(tok_dir)], [str(text)])
    (stats,) = report.stats
    assert stats.round_trip and stats.bytes == len(text.read_bytes())
    markdown = report.to_markdown()
    assert "bytes/token" in markdown and str(tok_dir) in markdown
    assert report.to_dict()["stats"][0]["tokens"] == stats.tokens
