"""`superbpe`: two-stage BPE (SuperBPE, Liu et al. 2025) with the stock `tokenizers` trainer.

Stage 1 is ordinary regex-pre-tokenized BPE up to `transition x vocab_size` tokens. Stage 2 drops the
whitespace boundary: the text is split only into spans of at most `max_words` words (numbers, punctuation and
newlines still end a span), each span is encoded with the stage-1 merges as one word, and BPE continues over
those stage-1 tokens, so the new merges join whole words into superwords ("Ġof" + "Ġthe").

Stage 2 runs the stock trainer over an alphabet of stage-1 tokens: each stage-1 id is written as one private-use
character, the trainer learns merges between them, and the merges are translated back into byte-level strings and
appended after stage 1's. Inference applies the same span split and then all merges by rank, which is exactly how
stage 2 saw its training text.

    tokenizer = train(chunks, TrainTokenizerOptions(mode="superbpe", vocab_size=32000), progress=False)
    tokenizer.encode(" in the middle of the night").tokens   # e.g. ['Ġin Ġthe', 'Ġmiddle Ġof Ġthe', 'Ġnight']
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from tokenadapt.errors import InputError
from tokenadapt.options import TrainTokenizerOptions
from tokenadapt.training.modes.base import ChunkSource, ModeSpec, byte_level, empty_tokenizer
from tokenadapt.training.modes.bpe import train_regex_bpe

# Two planes of private-use code points give one character to each of up to 131,068 stage-1 tokens.
_PLANES = ((0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))
MAX_STAGE1 = sum(hi - lo + 1 for lo, hi in _PLANES)


def span_pattern(max_words: int) -> str:
    """The stage-2 pre-tokenizer: runs of up to `max_words` words (each with its leading space or apostrophe
    contraction), or else one pre-token of the standard pattern (numbers, punctuation, whitespace)."""
    word = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
    return rf"(?:{word}){{1,{max_words}}}|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def symbol(token_id: int) -> str:
    """The private-use character standing for stage-1 token `token_id` in stage 2."""
    for lo, hi in _PLANES:
        if token_id <= hi - lo:
            return chr(lo + token_id)
        token_id -= hi - lo + 1
    raise ValueError("token id beyond the private-use planes")


def symbol_id(char: str) -> int:
    """Inverse of `symbol`."""
    code, offset = ord(char), 0
    for lo, hi in _PLANES:
        if lo <= code <= hi:
            return offset + code - lo
        offset += hi - lo + 1
    raise ValueError(f"{char!r} is not a stage-2 symbol")


def stage2_words(chunks: ChunkSource, stage1: Tokenizer, max_words: int) -> Iterator[list[str]]:
    """Each span of the text, encoded with stage 1's merges as one word, as a string of symbols.

    Special tokens met in the text end a word (they never take part in a merge).
    """
    splitter = pre_tokenizers.Split(Regex(span_pattern(max_words)), behavior="isolated")
    whole_span = Tokenizer.from_str(stage1.to_str())
    whole_span.pre_tokenizer = byte_level(None)
    table = [symbol(i) for i in range(stage1.get_vocab_size())]
    specials = {table[i] for i in stage1.get_added_tokens_decoder()}
    for text in chunks():
        spans = [span for span, _ in splitter.pre_tokenize_str(text)]
        words: list[str] = []
        for encoding in whole_span.encode_batch(spans, add_special_tokens=False):
            word = "".join(table[i] for i in encoding.ids)
            if specials and any(s in word for s in specials):
                for s in specials:
                    word = word.replace(s, "\n")
                words += [w for w in word.split("\n") if w]
            else:
                words.append(word)
        yield words


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    # tokenizers >= 0.20 writes merges as pairs, older versions as "a b" strings.
    pairs = [m if isinstance(m, list) else m.split(" ", 1) for m in model["merges"]]
    return [(a, b) for a, b in pairs]


def train(chunks: ChunkSource, options: TrainTokenizerOptions, progress: bool) -> Tokenizer:
    stage1 = train_regex_bpe(chunks, int(options.transition * options.vocab_size), options, progress)
    n_stage1 = stage1.get_vocab_size()
    if n_stage1 > MAX_STAGE1:
        raise InputError(
            f"superbpe supports a stage-1 vocabulary of at most {MAX_STAGE1} tokens, not {n_stage1}.",
            "Lower --vocab-size or --transition.",
        )
    stage1_model = json.loads(stage1.to_str())["model"]
    decode = {symbol(i): token for token, i in stage1_model["vocab"].items()}

    stage2 = Tokenizer(models.BPE())
    n_specials = len(options.special_tokens)
    # The alphabet is every stage-1 token but the special ones, so the trainer's size counts those once.
    trainer = trainers.BpeTrainer(
        vocab_size=options.vocab_size - n_specials,
        min_frequency=options.min_frequency,
        initial_alphabet=[symbol(i) for i in range(n_specials, n_stage1)],
        show_progress=progress,
    )
    stage2.train_from_iterator(stage2_words(chunks, stage1, options.max_words), trainer)

    vocab: dict[str, int] = dict(stage1_model["vocab"])
    merges = _merge_pairs(stage1_model)
    for left, right in _merge_pairs(json.loads(stage2.to_str())["model"]):
        pair = ("".join(decode[c] for c in left), "".join(decode[c] for c in right))
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))

    tokenizer = empty_tokenizer(span_pattern(options.max_words))
    tokenizer.model = models.BPE(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens(list(options.special_tokens.values()))
    return tokenizer


SPEC = ModeSpec("superbpe", "two-stage BPE: ordinary BPE, then merges across spaces within spans of words", train)
