"""Scoring: bits per byte by hand equals the evaluator's; windowing never changes the total when context fits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import tiny_llama
from tokenadapt.errors import InputError
from tokenadapt.evaluation.scoring import encode_with_byte_ends, score_text, sequence_losses, wants_bos, windows
from tokenadapt.options import EvalOptions

TEXT = "The cat sat on the mat. Der Hund schläft. 日本語のテスト。"


def hand_nll(model, ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return -sum(float(log_probs[i - 1, ids[i]]) for i in range(1, len(ids)))


def test_bits_per_byte_equals_a_hand_computation(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama(len(byte_level_tokenizer))
    ids = byte_level_tokenizer(TEXT, add_special_tokens=False).input_ids
    first_token_bytes = len(byte_level_tokenizer.decode(ids[:1]).encode())
    expected_bits = hand_nll(model, ids) / math.log(2)
    score = score_text(model, byte_level_tokenizer, TEXT, EvalOptions(context=256, stride=255, bos="never"))
    assert score.scored_tokens == len(ids) - 1
    assert score.scored_bytes == len(TEXT.encode()) - first_token_bytes
    assert score.bits_per_byte == pytest.approx(expected_bits / score.scored_bytes, rel=1e-5)
    assert score.tokens_per_byte == pytest.approx(len(ids) / len(TEXT.encode()))
    assert score.perplexity == pytest.approx(math.exp(hand_nll(model, ids) / (len(ids) - 1)), rel=1e-5)


def test_with_bos_every_token_and_byte_is_scored(metaspace_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama(len(metaspace_tokenizer))
    ids = metaspace_tokenizer(TEXT, add_special_tokens=False).input_ids
    score = score_text(model, metaspace_tokenizer, TEXT, EvalOptions(context=256, bos="auto"))
    assert score.bos  # the tokenizer adds <s> itself, so "auto" prepends it
    assert score.scored_tokens == len(ids)
    assert score.scored_bytes == len(TEXT.encode())
    expected = hand_nll(model, [metaspace_tokenizer.bos_token_id, *ids])
    assert score.nll == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("context, stride", [(8, 4), (256, 255)])
def test_sequence_losses_give_each_position_and_its_rival(byte_level_tokenizer, context: int, stride: int) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama(len(byte_level_tokenizer))
    ids = byte_level_tokenizer(TEXT, add_special_tokens=False).input_ids
    sequence = torch.tensor(ids)
    rivals = torch.full_like(sequence, -1)
    rivals[2::3] = (sequence[2::3] + 7) % len(byte_level_tokenizer)  # some other id at every third position
    rivals[4] = sequence[4]  # the target itself: its rival nll is its own nll
    options = EvalOptions(context=context, stride=stride, bos="never")
    nll, rival_nll = sequence_losses(model, sequence, 1, options, alternatives=rivals)
    assert rival_nll is not None
    assert nll[0] == 0.0 and nll.sum() == pytest.approx(score_text(model, byte_level_tokenizer, TEXT, options).nll)
    assert rival_nll[4] == pytest.approx(nll[4])
    assert np.isnan(rival_nll[rivals.numpy() < 0]).all()
    if context == 256:  # one pass: every figure equals a hand computation on the whole prefix
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=sequence[None]).logits[0].double(), dim=-1)
        for p in range(1, len(ids)):
            assert nll[p] == pytest.approx(-float(log_probs[p - 1, ids[p]]), rel=1e-4)
            if rivals[p] >= 0:
                assert rival_nll[p] == pytest.approx(-float(log_probs[p - 1, rivals[p]]), rel=1e-4)
    assert sequence_losses(model, sequence, 1, options)[1] is None


@pytest.mark.parametrize("context, stride", [(8, 3), (8, 7), (16, 16), (5, 1)])
def test_windows_score_every_position_exactly_once(context: int, stride: int) -> None:
    spans = windows(40, 1, context, stride)
    scored = [p for _, end, first in spans for p in range(first, end)]
    assert scored == list(range(1, 40))
    for start, end, first in spans:
        assert end - start <= context
        assert start <= first - 1  # the position predicting the first target is inside the window


def test_windowing_equals_one_pass_when_the_context_fits(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama(len(byte_level_tokenizer))
    one_pass = score_text(model, byte_level_tokenizer, TEXT, EvalOptions(context=256, stride=255, bos="never"))
    ids = byte_level_tokenizer(TEXT, add_special_tokens=False).input_ids
    assert len(ids) < 256
    # many small strides inside one big context: each window sees the whole prefix, so the total is identical
    strided = score_text(model, byte_level_tokenizer, TEXT, EvalOptions(context=256, stride=5, bos="never"))
    assert strided.nll == pytest.approx(one_pass.nll, rel=1e-5)
    short = score_text(model, byte_level_tokenizer, TEXT, EvalOptions(context=8, stride=4, bos="never"))
    assert short.scored_tokens == one_pass.scored_tokens
    assert short.nll != pytest.approx(one_pass.nll, rel=1e-6)  # less context really changes the figure


def test_byte_ends_follow_utf8_lengths(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, ends = encode_with_byte_ends(byte_level_tokenizer, "aé日")
    assert ends[-1] == len("aé日".encode())
    assert list(ends) == sorted(ends)


def test_bos_policies(byte_level_tokenizer, metaspace_tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert not wants_bos(byte_level_tokenizer, "always")  # no bos token at all
    assert wants_bos(metaspace_tokenizer, "auto")
    assert not wants_bos(metaspace_tokenizer, "never")


def test_empty_text_and_mismatched_model_are_clear_errors(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama(len(byte_level_tokenizer))
    with pytest.raises(InputError, match="empty"):
        score_text(model, byte_level_tokenizer, "  \n ")
    small = tiny_llama(10)
    with pytest.raises(InputError, match="do not belong together"):
        score_text(small, byte_level_tokenizer, TEXT)


def hand_token_nll(model, ids: list[int]) -> list[float]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return [-float(log_probs[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_per_document_perplexity_matches_a_hand_split(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    documents = ["The cat sat on the mat.", "Der Hund schläft.", "日本語のテスト。"]
    text = "\n\n".join(documents)
    ends, offset = [], 0
    for document in documents:
        offset += len(document.encode())
        ends.append(offset)
        offset += 2
    model = tiny_llama(len(byte_level_tokenizer))
    ids, byte_ends = encode_with_byte_ends(byte_level_tokenizer, text)
    token_nll = hand_token_nll(model, ids)  # token_nll[j] predicts ids[j + 1]
    expected_nll = [0.0, 0.0, 0.0]
    expected_tokens = [0, 0, 0]
    for j, nll in enumerate(token_nll):
        last_byte = int(byte_ends[j + 1]) - 1
        doc = next((d for d, end in enumerate(ends) if last_byte < end), 2)  # a separator goes with the next
        expected_nll[doc] += nll
        expected_tokens[doc] += 1
    score = score_text(
        model, byte_level_tokenizer, text, EvalOptions(context=256, stride=255, bos="never"), document_ends=ends
    )
    assert list(score.document_tokens) == expected_tokens
    assert score.document_nll == pytest.approx(expected_nll, rel=1e-5)
    assert sum(score.document_nll) == pytest.approx(score.nll)
    perplexities = [math.exp(n / t) for n, t in zip(expected_nll, expected_tokens, strict=True)]
    assert score.mean_perplexity == pytest.approx(sum(perplexities) / 3, rel=1e-5)
    assert score.median_perplexity == pytest.approx(sorted(perplexities)[1], rel=1e-5)
    assert score.words == len(text.split()) and score.tokens_per_word == len(ids) / len(text.split())


def test_one_document_by_default(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama(len(byte_level_tokenizer))
    score = score_text(model, byte_level_tokenizer, TEXT, EvalOptions(bos="never"))
    assert score.document_tokens == (score.scored_tokens,)
    assert score.mean_perplexity == pytest.approx(score.perplexity) == pytest.approx(score.median_perplexity)
