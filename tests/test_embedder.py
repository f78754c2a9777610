"""Auxiliary embeddings: deduplicated batching equals one-at-a-time pooling; the disk cache is checked and rebuilt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tokenadapt.embedder import AuxEmbedder, embed_vocabulary
from tokenadapt.vocab import build_vocabulary
from tokenadapt.zoo.cache import cache_path


def reference_embedding(embedder: AuxEmbedder, text: str) -> np.ndarray:
    """Mean pooling of one text, computed the plain way."""
    encoded = embedder.tokenizer(text, return_tensors="pt", truncation=True, max_length=embedder.max_length)
    with torch.no_grad():
        hidden = embedder.model(**encoded).last_hidden_state[0]
    return torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()


def test_batched_deduplicated_embedding_equals_one_at_a_time(tiny_embedder_dir: Path) -> None:
    embedder = AuxEmbedder.load(tiny_embedder_dir, batch_size=3)
    texts = ["the cat", "The Cat", " the cat", "dogs", "a much longer piece of text here", "dogs", "fox"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (7, embedder.dimension)
    for text, vector in zip(texts, vectors, strict=True):
        assert np.allclose(vector, reference_embedding(embedder, text), atol=1e-5)
    assert np.array_equal(vectors[0], vectors[1])  # an uncased embedder sees the same input
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_vocabulary_cache_is_reused_and_a_corrupt_entry_is_rebuilt(
    tiny_embedder_dir: Path, byte_level_tokenizer
) -> None:  # type: ignore[no-untyped-def]
    embedder = AuxEmbedder.load(tiny_embedder_dir)
    vocab = build_vocabulary(byte_level_tokenizer)
    first = embed_vocabulary(embedder, vocab)
    assert not first.from_cache
    assert not first.ok[vocab.id_by_string["Ċ"]] and first.ok[vocab.id_by_string["Ġthe"]]
    assert torch.equal(first.vectors[~first.ok], torch.zeros_like(first.vectors[~first.ok]))
    second = embed_vocabulary(embedder, vocab)
    assert second.from_cache and torch.equal(second.vectors, first.vectors)

    [entry] = cache_path("embeddings").rglob("*.npy")
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte
    entry.write_bytes(bytes(data))
    third = embed_vocabulary(embedder, vocab)
    assert not third.from_cache and third.rebuilt_corrupt_cache
    assert torch.equal(third.vectors, first.vectors)
    assert embed_vocabulary(embedder, vocab).from_cache  # rewritten correctly


def test_an_unloadable_embedder_is_a_clear_error(tmp_path: Path) -> None:
    from tokenadapt.errors import InputError

    with pytest.raises(InputError, match="auxiliary embedder"):
        AuxEmbedder.load(tmp_path)


def test_fast_input_keys_equal_the_tokenizer_call(tiny_embedder_dir: Path) -> None:
    embedder = AuxEmbedder.load(tiny_embedder_dir)
    texts = ["the cat", " The Cat", "dogs " * 40, "fox", "a much longer piece of text here"]
    expected = embedder.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=embedder.max_length)
    assert embedder._backend is not None  # a fast tokenizer: the Rust path is the one under test
    assert embedder.input_keys(texts) == [tuple(ids) for ids in expected["input_ids"]]
    assert len(embedder.input_keys(["dogs " * 40])[0]) == embedder.max_length  # truncated, special tokens kept


def test_a_donor_lends_the_vectors_of_inputs_it_has_and_the_rest_are_encoded(
    tiny_embedder_dir: Path, byte_level_tokenizer
) -> None:  # type: ignore[no-untyped-def]
    embedder = AuxEmbedder.load(tiny_embedder_dir, batch_size=4)
    vocab = build_vocabulary(byte_level_tokenizer)
    ids = np.array([vocab.id_by_string[s] for s in ["Ġthe", "The", "Ċ", "Ġcat", "cat"]])
    whole = embed_vocabulary(embedder, vocab)
    donor = embed_vocabulary(embedder, vocab, token_ids=ids[:2])  # " the" and "The": one uncased input
    lent = embed_vocabulary(embedder, vocab, token_ids=ids, donor=donor)
    assert lent.vectors.shape == (5, embedder.dimension) and lent.ok.tolist() == [True, True, False, True, True]
    assert (donor.encoded, lent.lent, lent.encoded) == (1, 2, 1)  # "the"; then " the", "The"; then "cat"
    assert torch.equal(lent.vectors[:2], donor.vectors)  # lent bit for bit
    for row, token in enumerate(ids.tolist()):  # and every row is what embedding that token gives
        assert torch.allclose(lent.vectors[row], whole.vectors[token], atol=1e-6)
    again = embed_vocabulary(embedder, vocab, token_ids=ids, donor=donor)
    assert again.from_cache and torch.equal(again.vectors, lent.vectors)
    cached_donor = embed_vocabulary(embedder, vocab, token_ids=ids[:2])
    assert cached_donor.from_cache and cached_donor.inputs is None  # a cached donor's inputs are read again
    fresh = embed_vocabulary(embedder, vocab, token_ids=ids, donor=cached_donor, use_cache=False)
    assert torch.equal(fresh.vectors, lent.vectors)
    other = embed_vocabulary(embedder, vocab, token_ids=ids, donor=whole)
    assert other.key != lent.key  # the donor is part of the cache key


def test_two_embedders_with_equal_sizes_have_different_fingerprints(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    """Two fine-tunes of one base share every size; sharing a cache key would give one the other's vectors."""
    import shutil

    other = tmp_path / "fine-tuned"
    shutil.copytree(tiny_embedder_dir, other)
    assert AuxEmbedder.load(other).fingerprint == AuxEmbedder.load(tiny_embedder_dir).fingerprint
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight changes, the size does not
    weights.write_bytes(bytes(data))
    assert AuxEmbedder.load(other).fingerprint != AuxEmbedder.load(tiny_embedder_dir).fingerprint
