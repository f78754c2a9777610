from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, pre_tokenizers

from tests.conftest import CORPUS
from tokenadapt.options import TrainTokenizerOptions
from tokenadapt.training.modes import MODES, get_mode
from tokenadapt.training.modes.superbpe import MAX_STAGE1, span_pattern, symbol, symbol_id
from tokenadapt.training.modes.supertoken import SPAN_LENGTHS, random_spans, word_spans

TEXT = CORPUS + ["in the middle of the night, in the middle of the day, in the middle of it all."] * 40
VARIANTS = {
    "bpe": TrainTokenizerOptions(mode="bpe", vocab_size=600),
    "supertoken": TrainTokenizerOptions(mode="supertoken", vocab_size=600),
    "supertoken-chars": TrainTokenizerOptions(mode="supertoken", vocab_size=600, spans="chars"),
    "superbpe": TrainTokenizerOptions(mode="superbpe", vocab_size=600, transition=0.7),
}


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    return {name: get_mode(o.mode).train(lambda: iter(TEXT), o, False) for name, o in VARIANTS.items()}


def test_registry_names_every_mode() -> None:
    assert list(MODES) == ["bpe", "supertoken", "superbpe"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300) | st.text(alphabet=" \n\t\r\u00a0a\u0301é日本🎉\x00\x07", max_size=300))
def test_every_mode_round_trips_arbitrary_unicode(trained: dict[str, Tokenizer], text: str) -> None:
    for name, tokenizer in trained.items():
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text, name


@pytest.mark.parametrize(
    "text",
    ["x" * 5000, "supercalifragilistic" * 300, "  \n\n\t  " * 500, "👩‍👩‍👧‍👦" * 200, "e\u0301" * 1000],
)
def test_every_mode_round_trips_long_and_odd_inputs(trained: dict[str, Tokenizer], text: str) -> None:
    for name, tokenizer in trained.items():
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text, name


def test_special_tokens_come_first_and_stay_whole(trained: dict[str, Tokenizer]) -> None:
    for name, tokenizer in trained.items():
        assert [tokenizer.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<unk>")] == [0, 1, 2, 3], name
        assert tokenizer.encode("a</s>b", add_special_tokens=False).tokens[1] == "</s>", name


def test_bpe_tokens_never_span_two_words(trained: dict[str, Tokenizer]) -> None:
    tokens = trained["bpe"].encode(" ".join(TEXT[:50])).tokens
    assert not [t for t in tokens if re.search(r"[^Ġ]Ġ", t)]


def test_supertokens_span_words_and_compress_better_than_bpe(trained: dict[str, Tokenizer]) -> None:
    text = "in the middle of the night, in the middle of the day"
    counts = {name: len(t.encode(text).ids) for name, t in trained.items()}
    assert any("Ġ" in t.strip("Ġ") for t in trained["supertoken"].encode(text).tokens)
    assert any("Ġ" in t[1:] for t in trained["superbpe"].encode(text).tokens)
    assert counts["supertoken"] < counts["bpe"] and counts["superbpe"] < counts["bpe"]


def test_superbpe_tokens_stay_within_max_words(trained: dict[str, Tokenizer]) -> None:
    vocab = trained["superbpe"].get_vocab()
    words = [len(re.findall(r"(?:^|Ġ)[^Ġ]", t)) for t in vocab]
    assert max(words) <= VARIANTS["superbpe"].max_words
    assert max(words) >= 2


def test_random_spans_tile_the_text_with_paper_lengths() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 50
    spans = random_spans(text, np.random.default_rng(1))
    assert "".join(spans) == text
    assert all(len(s) <= SPAN_LENGTHS.max() for s in spans)
    assert all(len(s) >= SPAN_LENGTHS.min() for s in spans[:-1])
    assert 11 < np.mean([len(s) for s in spans[:-1]]) < 15


def test_random_spans_drop_runs_of_seven_repeats() -> None:
    spans = random_spans("abc" + "=" * 20 + "def", np.random.default_rng(0))
    assert "".join(spans) == "abcdef" and not any("abcdef" in s for s in spans)


def test_word_spans_never_cut_a_word() -> None:
    text = "alpha beta  gamma\ndelta epsilon zeta eta theta"
    for seed in range(20):
        spans = word_spans(text, np.random.default_rng(seed), max_words=3)
        assert "".join(spans) == text
        assert all(not s[0].isalpha() or i == 0 for i, s in enumerate(spans))
        assert all(len(s.split()) <= 3 for s in spans)


def test_superbpe_symbols_round_trip_across_both_planes() -> None:
    ids = [0, 1, 65533, 65534, 70000, MAX_STAGE1 - 1]
    assert [symbol_id(symbol(i)) for i in ids] == ids
    with pytest.raises(ValueError):
        symbol(MAX_STAGE1)


def test_span_pattern_bounds_words_and_isolates_numbers_and_punctuation() -> None:
    split = pre_tokenizers.Split(Regex(span_pattern(2)), behavior="isolated")
    pieces = [p for p, _ in split.pre_tokenize_str(" one two three, 12345!\n\nfour")]
    assert pieces == [" one two", " three", ",", " ", "123", "45", "!\n\n", "four"]


def test_options_refuse_a_vocabulary_smaller_than_the_bytes() -> None:
    from tokenadapt.errors import InputError

    with pytest.raises(InputError, match="256 bytes plus 4 special tokens"):
        TrainTokenizerOptions(vocab_size=260).validated()
    with pytest.raises(InputError, match="stage 1"):
        dataclasses.replace(VARIANTS["superbpe"], vocab_size=300).validated()
    with pytest.raises(InputError, match="different"):
        TrainTokenizerOptions(eos_token="<s>").validated()


def test_supertoken_inference_cuts_only_very_long_inputs(trained: dict[str, Tokenizer]) -> None:
    pre = trained["supertoken"].pre_tokenizer
    assert pre is not None
    assert len(pre.pre_tokenize_str("the cat sat on the mat " * 100)) == 1
    assert [len(p) for p, _ in pre.pre_tokenize_str("x" * 40000)] == [16384, 16384, 7232]
