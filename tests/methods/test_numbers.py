"""Number tokens: which tokens take the digit estimate, its position weights, and how it mixes with any method."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from tests.methods.test_align import byte_level_bpe
from tokenadapt.methods import METHODS
from tokenadapt.methods.base import Estimate, MethodInputs
from tokenadapt.methods.numbers import apply_numbers, is_number, number_plan
from tokenadapt.options import TransplantOptions
from tokenadapt.transplant import transplant
from tokenadapt.vocab import Vocabulary, align_vocabularies, build_vocabulary


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"7", True), (b"957", True), (b" 2024", True), (b"  12", False), (b"1.5", False), (b"12a", False), (None, False)],
)
def test_number_tokens_are_digits_with_at_most_one_leading_space(data: bytes | None, expected: bool) -> None:
    assert is_number(data) is expected


def vocabularies() -> tuple[Vocabulary, Vocabulary, np.ndarray]:
    """Old: single digits only (as SmolLM2 splits numbers); new: "95", "957" and " 12" as whole tokens."""
    old = build_vocabulary(byte_level_bpe([("Ġ", "1")]))  # " 1" exists, " 12" does not
    new = build_vocabulary(byte_level_bpe([("9", "5"), ("95", "7"), ("Ġ", "1"), ("Ġ1", "2"), ("a", "b")]))
    alignment = align_vocabularies(old, new, old.size)
    return old, new, alignment.estimated_ids


def test_plan_spells_number_tokens_with_position_weights() -> None:
    old, new, new_ids = vocabularies()
    candidates = torch.ones(old.size, dtype=torch.bool)
    plan = number_plan(old, new, new_ids, candidates, decay=0.5, share=0.5)
    estimated = [new.tokens[i] for i in new_ids]
    assert sorted(estimated) == ["95", "957", "ab", "Ġ12"]
    numbered = sorted(estimated[int(p)] for p in plan.rows)
    assert numbered == ["95", "957", "Ġ12"]  # "ab" is no number
    dense = plan.estimate.to_dense()
    row = {estimated[int(p)]: dense[r] for r, p in enumerate(plan.rows)}
    digit = {c: old.id_by_string[c] for c in "0123456789"}
    assert row["957"][[digit["9"], digit["5"], digit["7"]]].tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert row["95"][[digit["9"], digit["5"]]].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert row["Ġ12"][[old.id_by_string["Ġ1"], digit["2"]]].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert torch.allclose(dense.sum(dim=1), torch.ones(3))


def test_numbers_mix_the_digit_estimate_into_any_method() -> None:
    old, new, new_ids = vocabularies()
    candidates = torch.ones(old.size, dtype=torch.bool)
    plan = number_plan(old, new, new_ids, candidates, decay=0.5, share=0.25)
    matrix = torch.randn(old.size, 3, generator=torch.Generator().manual_seed(0))
    inputs = MethodInputs(
        new_ids=new_ids,
        old_candidates=candidates,
        new_byte_lengths=torch.ones(len(new_ids)),
        old_byte_lengths=torch.ones(old.size),
        options=TransplantOptions(),
        numbers=plan,
    )
    method_rows = torch.randn(len(new_ids), 3, generator=torch.Generator().manual_seed(1))
    mixed = apply_numbers(matrix, inputs, Estimate(method_rows, {"hybrid": len(new_ids)}))
    position = {new.tokens[i]: p for p, i in enumerate(new_ids)}
    digit = {c: old.id_by_string[c] for c in "957"}
    p957 = position["957"]
    expected = 0.75 * method_rows[p957] + 0.25 * (
        4 / 7 * matrix[digit["9"]] + 2 / 7 * matrix[digit["5"]] + 1 / 7 * matrix[digit["7"]]
    )
    assert torch.allclose(mixed.rows[p957], expected, atol=1e-6)
    assert torch.equal(mixed.rows[position["ab"]], method_rows[position["ab"]])  # not a number: untouched
    assert mixed.paths == {"hybrid": 4, "numbers": 3}
    assert apply_numbers(matrix, dataclasses.replace(inputs, numbers=None), mixed) is mixed


def test_numbers_option_is_validated() -> None:
    assert TransplantOptions().numbers in ("auto", "off")
    with pytest.raises(Exception, match="--numbers"):
        TransplantOptions(numbers="sometimes").validated()


@pytest.mark.parametrize("numbers", ["auto", "off"])
def test_numbers_path_is_counted_in_the_report(
    tmp_path: Path, tied_model_dir: Path, tiny_embedder_dir: Path, numbers: str
) -> None:
    # the old tokenizer (trained on a corpus with "1234 + 5678 = 6912") onto one whose numbers are whole tokens
    new_dir = tmp_path / "numbers-tokenizer"
    byte_level_bpe([("1", "2"), ("12", "3"), ("5", "6"), ("56", "7"), ("6", "9")]).save_pretrained(str(new_dir))
    options = TransplantOptions(method="subword-mean", embedder=str(tiny_embedder_dir), numbers=numbers)
    result = transplant(tied_model_dir, new_dir, tmp_path / "out", options)
    paths = result.method_paths["input"]
    old_vocab = build_vocabulary(AutoTokenizer.from_pretrained(tied_model_dir))
    new_vocab = build_vocabulary(AutoTokenizer.from_pretrained(new_dir))
    estimated = align_vocabularies(old_vocab, new_vocab, old_vocab.size).estimated_ids
    expected = sum(is_number(new_vocab.canonical[i]) for i in estimated)
    assert expected >= 2  # e.g. "123" and "567", which the old vocabulary spells digit by digit
    assert paths.get("numbers", 0) == (expected if numbers == "auto" else 0)
    assert set(METHODS) >= {"align", "focus", "omp", "omp-hybrid"}
