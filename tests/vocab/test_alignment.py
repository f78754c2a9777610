"""Alignment: copies by bytes (or strings), special tokens by role, old rows beyond the matrix never used."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tokenadapt.vocab import Assignment, MatchMode, align_vocabularies, build_vocabulary
from tokenadapt.vocab.canonical import byte_to_unicode


def byte_level_from_vocab(tokens: list[str], specials: list[str], **declared: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with exactly these (GPT-2 alphabet) tokens and special tokens."""
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **declared)


def metaspace_from_vocab(tokens: list[str], specials: list[str], **declared: str) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **declared)


def test_canonical_matches_across_families_and_counts_separately() -> None:
    old = byte_level_from_vocab(["a", "b", "Ġthe", "Ġcat", "cat", "<0x41>"], ["<|endoftext|>"])
    new = metaspace_from_vocab(["a", "▁the", "▁dog", "cat", "<0xE2>"], ["</s>"], eos_token="</s>")
    old_v, new_v = build_vocabulary(old), build_vocabulary(new)
    alignment = align_vocabularies(old_v, new_v, old_rows=old_v.size)
    kinds = {new_v.tokens[i]: Assignment(int(k)) for i, k in enumerate(alignment.kinds)}
    assert kinds["a"] is Assignment.EXACT
    assert kinds["cat"] is Assignment.EXACT
    assert kinds["▁the"] is Assignment.CANONICAL
    assert old_v.tokens[alignment.source[new_v.id_by_string["▁the"]]] == "Ġthe"
    assert kinds["▁dog"] is Assignment.ESTIMATED
    assert kinds["<0xE2>"] is Assignment.ESTIMATED  # byte 0xE2 is not in the old vocabulary
    counts = alignment.counts()
    assert (counts["exact"], counts["canonical"], counts["estimated"]) == (2, 1, 2)
    # "<0x41>" in a byte-level vocabulary is literal text, not a byte: it must not match the byte "A"
    assert old_v.canonical[old_v.id_by_string["<0x41>"]] == b"<0x41>"


def test_string_mode_reproduces_raw_string_matching() -> None:
    old = byte_level_from_vocab(["a", "Ġthe"], [])
    new = metaspace_from_vocab(["a", "▁the"], [])
    old_v, new_v = build_vocabulary(old), build_vocabulary(new)
    by_string = align_vocabularies(old_v, new_v, old_v.size, MatchMode.STRING).counts()
    by_bytes = align_vocabularies(old_v, new_v, old_v.size, MatchMode.BYTES).counts()
    assert (by_string["exact"], by_string["canonical"], by_string["estimated"]) == (1, 0, 1)
    assert (by_bytes["exact"], by_bytes["canonical"], by_bytes["estimated"]) == (1, 1, 0)


def test_special_tokens_map_by_role_with_fallbacks() -> None:
    # Old: SmolLM2-like (no bos; <|endoftext|> separates documents; chat markers; declared bos repurposed)
    old = byte_level_from_vocab(
        ["a"],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    # New: Llama-3-like
    new = byte_level_from_vocab(
        ["a"],
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|eot_id|>",
            "<|start_header_id|>",
            "<|reserved_special_token_0|>",
        ],
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
    )
    old_v, new_v = build_vocabulary(old), build_vocabulary(new)
    alignment = align_vocabularies(old_v, new_v, old_v.size)
    source = {m.new_token: (m.old_token, m.how) for m in alignment.specials}
    # bos: no known bos spelling in the old vocabulary -> the end-of-text separator, not the declared <|im_start|>
    assert source["<|begin_of_text|>"] == ("<|endoftext|>", "eos")
    assert source["<|end_of_text|>"] == ("<|endoftext|>", "eos")
    assert source["<|eot_id|>"] == ("<|im_end|>", "turn_end")
    assert source["<|start_header_id|>"] == ("<|im_start|>", "turn_start")
    assert source["<|reserved_special_token_0|>"] == (None, "unmatched")
    # each new special id is assigned exactly once, from the old id it names
    for match in alignment.specials:
        new_id = new_v.id_by_string[match.new_token]
        if match.old_token is not None:
            assert alignment.source[new_id] == old_v.id_by_string[match.old_token]


def test_identical_special_strings_match_exactly() -> None:
    old = byte_level_from_vocab(["a"], ["<|endoftext|>"])
    new = byte_level_from_vocab(["a", "b"], ["<|endoftext|>"])
    old_v, new_v = build_vocabulary(old), build_vocabulary(new)
    alignment = align_vocabularies(old_v, new_v, old_v.size)
    assert alignment.counts()["special-exact"] == 1


def test_old_ids_beyond_the_embedding_rows_are_never_copied() -> None:
    old = byte_level_from_vocab(["a", "b", "c"], ["<|endoftext|>"])
    new = byte_level_from_vocab(["a", "b", "c"], ["<|endoftext|>"])
    old_v, new_v = build_vocabulary(old), build_vocabulary(new)
    alignment = align_vocabularies(old_v, new_v, old_rows=2)  # "c" (id 2) and the special (id 3) have no row
    assert alignment.source.max() < 2
    assert Assignment(int(alignment.kinds[new_v.id_by_string["c"]])) is Assignment.ESTIMATED
    assert Assignment(int(alignment.kinds[new_v.id_by_string["<|endoftext|>"]])) is Assignment.SPECIAL_UNMATCHED


def test_alignment_of_a_vocabulary_with_itself_copies_everything(byte_level_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = build_vocabulary(byte_level_tokenizer)
    alignment = align_vocabularies(vocab, vocab, vocab.size)
    assert (alignment.source == range(vocab.size)).all()
    assert alignment.counts()["estimated"] == 0
    assert len(byte_to_unicode()) == 256


def wordpiece_from_vocab(tokens: list[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["[UNK]", *tokens])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[UNK]"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


words = st.lists(
    st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Lo", "Nd")), min_size=1, max_size=6),
    min_size=1,
    max_size=12,
    unique=True,
)


@settings(max_examples=60, deadline=None)
@given(words)
def test_the_same_words_match_by_bytes_in_every_family(vocabulary_words: list[str]) -> None:
    """A word-initial and a word-internal form of each word, spelled per family, always match by bytes."""
    to_gpt2 = byte_to_unicode()

    def gpt2(text: str) -> str:
        return "".join(to_gpt2[b] for b in text.encode())

    byte_level = byte_level_from_vocab(
        [gpt2(" " + w) for w in vocabulary_words] + [gpt2(w) for w in vocabulary_words], []
    )
    metaspace = metaspace_from_vocab(["▁" + w for w in vocabulary_words] + list(vocabulary_words), [])
    wordpiece = wordpiece_from_vocab(list(vocabulary_words) + ["##" + w for w in vocabulary_words])
    vocabularies = [build_vocabulary(t) for t in (byte_level, metaspace, wordpiece)]
    for old in vocabularies:
        for new in vocabularies:
            alignment = align_vocabularies(old, new, old.size)
            counts = alignment.counts()
            assert counts["exact"] + counts["canonical"] == 2 * len(vocabulary_words)
            for new_id in alignment.copied_ids:
                assert old.canonical[alignment.source[new_id]] == new.canonical[new_id]
