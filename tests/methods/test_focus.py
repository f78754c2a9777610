"""`focus`: sparsemax and FOCUS weights against hand computations; fastText training where it is installed."""

from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.methods.test_methods import CANDIDATE_MEAN, OLD, make_inputs
from tokenadapt.errors import InputError
from tokenadapt.method_inputs import fasttext_vectors
from tokenadapt.methods import get_method
from tokenadapt.methods.align import token_spans
from tokenadapt.methods.focus import focus_weights, sparsemax
from tokenadapt.options import TransplantOptions
from tokenadapt.transplant import transplant
from tokenadapt.vocab import build_vocabulary


def test_sparsemax_matches_the_worked_example() -> None:
    assert torch.allclose(sparsemax(torch.tensor([[0.9, 0.5, 0.1]])), torch.tensor([[0.7, 0.3, 0.0]]))


def test_sparsemax_is_a_sparse_distribution_and_exact_past_the_top_scores() -> None:
    scores = torch.randn(20, 600, generator=torch.Generator().manual_seed(0)) * 0.01  # flat: a wide support
    scores[0, :3] = torch.tensor([5.0, 4.5, 0.0])
    exact = sparsemax(scores, top=600)
    fast = sparsemax(scores, top=8)  # rows whose support reaches past 8 are redone on a full sort
    assert torch.allclose(fast, exact, atol=1e-6)
    assert torch.allclose(exact.sum(dim=1), torch.ones(20), atol=1e-5)
    assert (exact >= 0).all() and (exact == 0).any()
    assert torch.allclose(exact[0, :2], torch.tensor([0.75, 0.25]))  # 5 - tau + 4.5 - tau = 1 -> tau = 4.25


def test_focus_weights_are_sparsemax_of_cosines_to_shared_tokens() -> None:
    shared = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    shared_old_ids = torch.tensor([2, 0, 1])
    new = torch.tensor([[0.6, 0.8], [3.0, 0.0], [0.0, 0.0]])
    combo = focus_weights(new, torch.tensor([True, True, False]), shared, shared_old_ids, old_rows=4, chunk_size=1)
    dense = combo.matrix.to_dense()
    # token 0: cosines (0.6, 0.8, -0.6) -> tau = (1.4 - 1) / 2 = 0.2 -> (0.4, 0.6, 0) on old ids (2, 0, 1)
    assert torch.allclose(dense[0], torch.tensor([0.6, 0.0, 0.4, 0.0]))
    assert torch.allclose(dense[1], torch.tensor([0.0, 0.0, 1.0, 0.0]))  # cosines (1, 0, -1): all on the first
    assert dense[2].abs().sum() == 0 and combo.found.tolist() == [True, True, False]
    assert combo.score.tolist() == [2.0, 1.0, 0.0]


def test_focus_estimate_combines_old_rows_and_falls_back_where_no_vector() -> None:
    base = make_inputs(TransplantOptions(method="focus", text="x", fallback="mean"))
    combo = focus_weights(
        torch.tensor([[0.6, 0.8], [1.0, 0.0]]),
        torch.tensor([True, False]),
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        torch.tensor([0, 1]),
        old_rows=4,
    )
    inputs = dataclasses.replace(base, focus=combo)
    estimate = get_method("focus").fn(OLD, inputs)
    assert torch.allclose(estimate.rows[0], 0.4 * OLD[0] + 0.6 * OLD[1])
    assert torch.allclose(estimate.rows[1], CANDIDATE_MEAN)
    assert estimate.paths == {"focus": 1, "fallback-mean": 1}


def test_focus_without_fasttext_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, byte_level_tokenizer: Any
) -> None:
    real_import = builtins.__import__

    def no_fasttext(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "fasttext":
            raise ImportError("No module named 'fasttext'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fasttext)
    vocab = build_vocabulary(byte_level_tokenizer)
    with pytest.raises(InputError, match=r"pip install 'tokenadapt\[focus\]'"):
        fasttext_vectors(token_spans(vocab, ["the cat"]), vocab, TransplantOptions())


def test_focus_needs_a_text() -> None:
    with pytest.raises(InputError, match="--text"):
        TransplantOptions(method="focus").validated()


def test_fasttext_vectors_are_deterministic_and_cover_frequent_tokens(byte_level_tokenizer: Any) -> None:
    pytest.importorskip("fasttext")
    vocab = build_vocabulary(byte_level_tokenizer)
    spans = token_spans(vocab, ["cats and dogs, cats and mice, the cat sat on the mat."] * 30)
    options = TransplantOptions(focus_dim=8, focus_epochs=2, focus_min_count=5)
    vectors, ok = fasttext_vectors(spans, vocab, options)
    again, _ = fasttext_vectors(spans, vocab, options)
    assert torch.equal(vectors, again)
    counts = np.bincount(spans.ids, minlength=vocab.size)
    assert ok.numpy().tolist() == (counts >= 5).tolist()
    assert vectors[ok].abs().sum(dim=1).gt(0).all() and vectors[~ok].abs().sum() == 0


def test_focus_end_to_end(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    pytest.importorskip("fasttext")
    from tests.conftest import CORPUS

    text = tmp_path / "text.txt"
    text.write_text("\n".join(CORPUS), encoding="utf-8")
    options = TransplantOptions(
        method="focus", text=str(text), embedder=str(tiny_embedder_dir), focus_dim=8, focus_min_count=2
    )
    result = transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "out", options)
    paths = result.method_paths["input"]
    assert paths["focus"] >= 1 and paths["focus"] + paths["fallback-hybrid"] == result.counts["estimated"]
    assert any(w.startswith("focus:") and "--focus-min-count 2" in w for w in result.warnings)
