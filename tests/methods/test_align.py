"""`align`: byte-span overlap counts against hand computations, and a text whose token mapping is known."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.methods.test_methods import CANDIDATE_MEAN, OLD, make_inputs
from tokenadapt.errors import InputError
from tokenadapt.method_inputs import load_documents, paired_lines
from tokenadapt.methods import get_method, required_needs
from tokenadapt.methods.align import TokenSpans, overlap_counts, parallel_counts, text_counts, token_spans
from tokenadapt.methods.base import MethodInputs, SparseCombination
from tokenadapt.methods.combine import sparse_matrix
from tokenadapt.options import TransplantOptions
from tokenadapt.transplant import transplant
from tokenadapt.vocab import build_vocabulary
from tokenadapt.vocab.canonical import byte_to_unicode


def spans(ids: list[int], bounds: list[int]) -> TokenSpans:
    return TokenSpans(np.array(ids), np.array(bounds[:-1]), np.array(bounds[1:]))


def test_overlap_counts_split_each_occurrence_by_shared_bytes() -> None:
    # text " transplant trans": new tokens " transplant"(7) " trans"(8); old " trans"(1) "plant"(2) " trans"(1)
    new = spans([7, 8], [0, 11, 17])
    old = spans([1, 2, 1], [0, 6, 11, 17])
    pair_new, pair_old, counts = overlap_counts(new, old)
    table = {(int(n), int(o)): float(c) for n, o, c in zip(pair_new, pair_old, counts, strict=True)}
    assert table == pytest.approx({(7, 1): 6 / 11, (7, 2): 5 / 11, (8, 1): 1.0})


def test_overlap_counts_with_boundaries_that_cross() -> None:
    # new "ab|cd" vs old "a|bcd": the new "ab" shares "a" with old 0 and "b" with old 1; "cd" lies inside old 1
    pair_new, pair_old, counts = overlap_counts(spans([10, 11], [0, 2, 4]), spans([0, 1], [0, 1, 4]))
    table = {(int(n), int(o)): float(c) for n, o, c in zip(pair_new, pair_old, counts, strict=True)}
    assert table == pytest.approx({(10, 0): 0.5, (10, 1): 0.5, (11, 1): 1.0})


def test_overlap_counts_never_pair_tokens_of_different_documents() -> None:
    new = TokenSpans(np.array([5, 6]), np.array([0, 4]), np.array([3, 7]))  # a 1-byte gap between documents
    old = TokenSpans(np.array([1, 2]), np.array([0, 4]), np.array([3, 7]))
    pair_new, pair_old, _ = overlap_counts(new, old)
    assert list(zip(pair_new.tolist(), pair_old.tolist(), strict=True)) == [(5, 1), (6, 2)]


def byte_level_bpe(merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the 256 byte tokens, then one token per merge (in order)."""
    alphabet = [byte_to_unicode()[b] for b in range(256)]
    vocab = {char: i for i, char in enumerate(alphabet)}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_token_spans_cover_the_text_exactly_even_inside_a_character() -> None:
    vocab = build_vocabulary(byte_level_bpe([("Ġ", "c"), ("Ġc", "a")]))
    text = "ca ca é"  # "é" is two bytes, two byte-level tokens
    found = token_spans(vocab, [text, "a"])
    assert found.exact == 2
    assert found.ends.tolist()[:6] == [1, 2, 5, 6, 7, 8]  # "c" "a" " ca" " " and the two bytes of "é"
    assert found.starts.tolist()[-1] == len(text.encode()) + 1  # the second document starts after a 1-byte gap
    assert found.doc_ends.tolist() == [6, 7]


def test_token_spans_absorb_a_sentencepiece_dummy_prefix(metaspace_tokenizer: PreTrainedTokenizerFast) -> None:
    vocab = build_vocabulary(metaspace_tokenizer)
    text = "the cat sat on the mat."
    found = token_spans(vocab, [text])
    assert found.exact == 1
    assert found.starts[0] == 0 and found.ends[-1] == len(text)
    assert (found.ends[:-1] == found.starts[1:]).all()  # a partition of the text


def test_align_on_a_text_where_the_mapping_is_known() -> None:
    # old: " trans" and "plant" are tokens; new: " transplant" is one token, " trans" too
    merges = [("Ġ", "t"), ("Ġt", "r"), ("Ġtr", "a"), ("Ġtra", "n"), ("Ġtran", "s")]
    merges += [("p", "l"), ("pl", "a"), ("pla", "n"), ("plan", "t")]
    old_vocab = build_vocabulary(byte_level_bpe(merges))
    new_vocab = build_vocabulary(byte_level_bpe([*merges, ("Ġtrans", "plant")]))
    text = " transplant trans transplant"
    new_spans, old_spans = token_spans(new_vocab, [text]), token_spans(old_vocab, [text])
    whole, trans, plant = (
        new_vocab.id_by_string["Ġtransplant"],
        old_vocab.id_by_string["Ġtrans"],
        old_vocab.id_by_string["plant"],
    )
    new_ids = np.array([whole])
    candidates = torch.ones(old_vocab.size, dtype=torch.bool)
    counts = text_counts(new_spans, old_spans, new_ids, candidates)
    dense = counts.matrix.to_dense()
    assert dense[0, trans] == pytest.approx(2 * 6 / 11) and dense[0, plant] == pytest.approx(2 * 5 / 11)
    assert dense.sum() == pytest.approx(2.0) and counts.score.tolist() == [pytest.approx(2.0)]

    old = torch.randn(old_vocab.size, 4, generator=torch.Generator().manual_seed(0))
    inputs = MethodInputs(
        new_ids=new_ids,
        old_candidates=candidates,
        new_byte_lengths=torch.tensor([11.0]),
        old_byte_lengths=torch.ones(old_vocab.size),
        options=TransplantOptions(method="align", text="x", fallback="mean", align_smoothing=0.0),
        text_counts=counts,
    )
    estimate = get_method("align").fn(old, inputs)
    assert torch.allclose(estimate.rows[0], (6 * old[trans] + 5 * old[plant]) / 11, atol=1e-6)
    assert estimate.paths == {"align": 1, "fallback-mean": 0}


def counts_for(rows: list[int], cols: list[int], values: list[float], count: int = 2) -> SparseCombination:
    matrix = sparse_matrix(torch.tensor(rows), torch.tensor(cols), torch.tensor(values), (count, OLD.shape[0]))
    occurrences = matrix.to_dense().sum(dim=1)
    return SparseCombination(matrix, occurrences > 0, occurrences)


@pytest.mark.parametrize("smoothing", [0.0, 1.0, 3.0])
def test_align_is_the_smoothed_count_weighted_mean(smoothing: float) -> None:
    # token 0 seen twice: 1.5 of old 0, 0.5 of old 1; token 1 never seen
    options = TransplantOptions(method="align", text="x", fallback="subword-mean", align_smoothing=smoothing)
    base = make_inputs(options)
    inputs = dataclasses.replace(base, text_counts=counts_for([0, 0], [0, 1], [1.5, 0.5]))
    estimate = get_method("align").fn(OLD, inputs)
    fallback = get_method("subword-mean").fn(OLD, inputs).rows
    expected = (1.5 * OLD[0] + 0.5 * OLD[1] + smoothing * fallback[0]) / (2 + smoothing)
    assert torch.allclose(estimate.rows[0], expected, atol=1e-6)
    assert torch.allclose(estimate.rows[1], CANDIDATE_MEAN)  # unseen and unspellable: the fallback's own fallback
    assert estimate.paths == {"align": 1, "fallback-subword-mean": 1}


def test_align_needs_a_text_and_its_fallback_inputs() -> None:
    with pytest.raises(InputError, match="--text"):
        TransplantOptions(method="align").validated()
    assert required_needs(get_method("align"), "hybrid") == {"text", "decomposition", "aux", "neighbors"}
    assert required_needs(get_method("align"), "mean") == {"text"}


def test_text_names_use_their_dev_split_and_paths_are_read_whole(tmp_path: Path) -> None:
    one, two = tmp_path / "a.txt", tmp_path / "b,c.txt"
    one.write_text("first text", encoding="utf-8")
    two.write_text("second", encoding="utf-8")
    documents, described = load_documents(str(one))
    assert documents == ["first text"] and described == f"{one}: 10 bytes"
    documents, _ = load_documents(str(two))  # an existing path keeps its comma
    assert documents == ["second"]
    documents, _ = load_documents(f"{one}, {one}")  # several texts, joined by commas
    assert documents == ["first text", "first text"]
    documents, _ = load_documents(f"{one}, {one}", max_bytes=12)
    assert sum(len(d) for d in documents) <= 12
    with pytest.raises(InputError, match="neither a built-in text"):
        load_documents("no-such-text")


def test_a_built_in_text_trains_on_its_dev_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenadapt.zoo.texts as texts

    seen: list[tuple[str, str]] = []

    def fake_load(name: str, split: str = "test") -> texts.TextCorpus:
        seen.append((name, split))
        return texts.TextCorpus(name, split, ("dev text",), {})

    monkeypatch.setattr(texts, "load_text", fake_load)
    documents, described = load_documents("wiki-en")
    assert seen == [("wiki-en", "dev")] and documents == ["dev text"]
    assert described == "wiki-en (dev split): 8 bytes"


def test_align_end_to_end_reports_unseen_tokens(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n\ncats and dogs, cats and mice.", encoding="utf-8")
    options = TransplantOptions(method="align", text=str(text), embedder=str(tiny_embedder_dir))
    result = transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "out", options)
    paths = result.method_paths["input"]
    assert paths["align"] >= 1 and paths["fallback-hybrid"] >= 1
    assert paths["align"] + paths["fallback-hybrid"] == result.counts["estimated"]
    assert any(w.startswith("align:") and "never occur in --text" in w and "hybrid" in w for w in result.warnings)


def test_parallel_counts_recover_a_known_dictionary_despite_reordering() -> None:
    # new token 100 + w translates old token w; the old side is shuffled, so only co-occurrence can tell
    rng = np.random.default_rng(0)
    new_lines, old_lines = [], []
    for _ in range(300):
        words = rng.choice(20, size=int(rng.integers(2, 7)), replace=False)
        new_lines.append(100 + words)
        old_lines.append(rng.permutation(words))
    new_ids, old_ids, counts = parallel_counts(new_lines, old_lines)
    dense = np.zeros((120, 20))
    np.add.at(dense, (new_ids, old_ids), counts)
    assert (dense[100:].argmax(axis=1) == np.arange(20)).all()
    occurrences = np.bincount(np.concatenate(new_lines), minlength=120)
    assert np.allclose(dense.sum(axis=1), occurrences)  # each occurrence of t spreads exactly 1 over old tokens
    assert (dense[100:].max(axis=1) / occurrences[100:] > 0.75).all()  # most of each token goes to its translation


def test_parallel_counts_ignore_lines_with_an_empty_side_and_reject_unpaired_input() -> None:
    new_ids, old_ids, counts = parallel_counts([np.array([5]), np.array([6, 7])], [np.array([1]), np.array([])])
    assert new_ids.tolist() == [5] and old_ids.tolist() == [1] and counts.tolist() == [pytest.approx(1.0)]
    with pytest.raises(ValueError, match="lines"):
        parallel_counts([np.array([5])], [])


def test_paired_lines_pair_within_documents_and_skip_documents_that_do_not_pair() -> None:
    new_docs = ["Das Haus\n\nDer Hund\n", "eins\nzwei", "Katze"]
    old_docs = ["The house\nThe dog", "one", "cat"]
    assert paired_lines(new_docs, old_docs) == (["Das Haus", "Der Hund", "Katze"], ["The house", "The dog", "cat"], 1)
    assert paired_lines(new_docs, old_docs, max_bytes=3) == (["Das Haus"], ["The house"], 0)


def test_align_with_a_parallel_text_end_to_end(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    target, source = tmp_path / "de.txt", tmp_path / "en.txt"
    target.write_text("Die Katze schläft.\nDer Hund bellt laut.\nDie Katze und der Hund.\n", encoding="utf-8")
    source.write_text("The cat sleeps.\nThe dog barks loudly.\nThe cat and the dog.\n", encoding="utf-8")
    options = TransplantOptions(
        method="align", text=str(target), parallel_text=str(source), embedder=str(tiny_embedder_dir)
    )
    result = transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "out", options)
    paths = result.method_paths["input"]
    assert paths["align"] >= 1 and paths["align"] + paths["fallback-hybrid"] == result.counts["estimated"]
    assert any("3 line pairs of --text" in w and "--parallel-text" in w for w in result.warnings)

    source.write_text("The cat sleeps.\nThe dog barks loudly.\n", encoding="utf-8")
    with pytest.raises(InputError, match="no document whose lines pair up"):
        transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "out2", options)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(InputError, match="--parallel-text is read only by --method align"):
        TransplantOptions(method="hybrid", parallel_text=str(source)).validated()
