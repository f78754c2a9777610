"""What every training mode shares: the byte-level tokenizer skeleton, the trainer, the registry entry.

All modes build byte-level BPE: every string is some sequence of the 256 byte symbols, so any Unicode text
encodes without an unknown token and decodes back to itself exactly. No normalizer is applied (the paper's code
applies NFC, which would break that round trip for text that is not already NFC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tokenadapt.options import TrainTokenizerOptions

# The regex pre-tokenizer of Llama-3 / cl100k: contractions, words with one leading non-letter, numbers in
# groups of at most three digits, punctuation runs, newlines, and whitespace not followed by a word.
STANDARD_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

ChunkSource = Callable[[], Iterable[str]]
"""A function returning a fresh iterable over the training text (modes may read it more than once)."""


def byte_level(pattern: str | None = None) -> pre_tokenizers.PreTokenizer:
    """Split by `pattern` (if any), then map bytes to the 256 byte-level symbols."""
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pattern is None:
        return to_bytes
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"), to_bytes])


def empty_tokenizer(pattern: str | None = None) -> Tokenizer:
    """An untrained byte-level BPE tokenizer whose pre-tokenizer splits by `pattern` (None: not at all)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = byte_level(pattern)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def bpe_trainer(
    vocab_size: int, options: TrainTokenizerOptions, progress: bool, max_token_length: int | None = None
) -> trainers.BpeTrainer:
    """A BPE trainer with every byte in the alphabet (so unseen bytes still encode) and the special tokens first."""
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=options.min_frequency,
        special_tokens=list(options.special_tokens.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=progress,
    )


@dataclass(frozen=True)
class ModeSpec:
    """A registered training mode: `train(chunks, options, progress)` returns a trained tokenizer."""

    name: str
    summary: str
    train: Callable[[ChunkSource, TrainTokenizerOptions, bool], Tokenizer]
