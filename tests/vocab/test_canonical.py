"""Canonical bytes: every family's spelling maps to the bytes it stands for, and decomposition spells them back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenadapt.vocab import Family, build_vocabulary, canonical_bytes, detect_family
from tokenadapt.vocab.canonical import byte_to_unicode, bytes_to_model_string, unicode_to_byte


def test_byte_level_alphabet_is_a_bijection_over_256_bytes() -> None:
    table = byte_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(unicode_to_byte()[char] == byte for byte, char in table.items())


def test_each_family_spells_a_leading_space_its_own_way() -> None:
    assert canonical_bytes("Ġthe", Family.BYTE_LEVEL) == b" the"
    assert canonical_bytes("▁the", Family.METASPACE) == b" the"
    assert canonical_bytes("the", Family.WORDPIECE) == b" the"
    assert canonical_bytes("##the", Family.WORDPIECE) == b"the"
    assert canonical_bytes("the", Family.RAW) == b"the"


def test_byte_fallback_and_partial_utf8() -> None:
    assert canonical_bytes("<0xE2>", Family.METASPACE) == b"\xe2"
    assert canonical_bytes("<0x0A>", Family.METASPACE) == b"\n"
    # GPT-2 alphabet: "æĹ" is the first two bytes of "日" (e6 97 a5), a partial UTF-8 token
    assert canonical_bytes("æĹ", Family.BYTE_LEVEL) == "日".encode()[:2]


@given(st.binary(max_size=40))
def test_byte_level_model_string_round_trips(data: bytes) -> None:
    assert canonical_bytes(bytes_to_model_string(data, Family.BYTE_LEVEL), Family.BYTE_LEVEL) == data


def test_families_are_detected_from_tokenizer_json(
    byte_level_tokenizer, metaspace_tokenizer, wordpiece_tokenizer
) -> None:  # type: ignore[no-untyped-def]
    import json

    def family(tok):  # type: ignore[no-untyped-def]
        return detect_family(json.loads(tok.backend_tokenizer.to_str()))

    assert family(byte_level_tokenizer) is Family.BYTE_LEVEL
    assert family(metaspace_tokenizer) is Family.METASPACE
    assert family(wordpiece_tokenizer) is Family.WORDPIECE


def test_special_tokens_have_no_bytes_and_carry_roles(metaspace_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = build_vocabulary(metaspace_tokenizer)
    for token in ("<unk>", "<s>", "</s>"):
        token_id = vocab.id_by_string[token]
        assert token_id in vocab.special_ids
        assert vocab.canonical[token_id] is None
    assert vocab.roles["bos"] == (vocab.id_by_string["<s>"],)
    assert vocab.roles["declared:eos"] == (vocab.id_by_string["</s>"],)
    # byte-fallback tokens are ordinary tokens that stand for one byte
    assert vocab.canonical[vocab.id_by_string["<0xE6>"]] == b"\xe6"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=24))
def test_byte_level_decomposition_spells_any_bytes_exactly(byte_level_tokenizer, data: bytes) -> None:  # type: ignore[no-untyped-def]
    vocab = build_vocabulary(byte_level_tokenizer)
    pieces = vocab.encode_bytes(data)
    assert b"".join(vocab.canonical[i] or b"" for i in pieces) == data


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_metaspace_decomposition_spells_any_text_exactly(metaspace_tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    vocab = build_vocabulary(metaspace_tokenizer)
    data = text.encode("utf-8")
    pieces = vocab.encode_bytes(data)
    assert b"".join(vocab.canonical[i] or b"" for i in pieces) == data


def test_metaspace_decomposition_has_no_dummy_prefix_and_keeps_word_start(metaspace_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = build_vocabulary(metaspace_tokenizer)
    mid_word = vocab.encode_bytes(b"ing")
    assert not (vocab.tokens[mid_word[0]] or "").startswith("▁")  # the full pipeline would prepend ▁
    word_start = vocab.encode_bytes(b" the")
    assert (vocab.tokens[word_start[0]] or "").startswith("▁")


def test_partial_utf8_goes_to_byte_fallback(metaspace_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = build_vocabulary(metaspace_tokenizer)
    data = "日本".encode()[:4]  # 日 + the first byte of 本
    pieces = vocab.encode_bytes(data)
    assert [vocab.tokens[i] for i in pieces][-1] == "<0xE6>"
    assert b"".join(vocab.canonical[i] or b"" for i in pieces) == data


def test_embedding_text_skips_partial_utf8_and_whitespace(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = build_vocabulary(byte_level_tokenizer)
    assert vocab.embedding_text(vocab.id_by_string["Ġthe"]) == " the"
    assert vocab.embedding_text(vocab.id_by_string["Ċ"]) is None  # "\n"
    partial = next(i for i, b in enumerate(vocab.canonical) if b and b[0] >= 0xE0 and len(b) < 3)
    assert vocab.embedding_text(partial) is None
    assert vocab.embedding_text(vocab.id_by_string["<|endoftext|>"]) is None
