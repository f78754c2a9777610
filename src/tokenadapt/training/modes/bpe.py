"""`bpe`: conventional byte-level BPE behind the Llama-3 regex pre-tokenizer, the control for supertokens.

Tokens never cross the regex's boundaries (a word with its leading space, a number of up to three digits, a
punctuation run), so no token spans two words.

    tokenizer = train(lambda: ["the cat sat on the mat"] * 100, TrainTokenizerOptions(vocab_size=300), False)
    tokenizer.encode("the cat").tokens   # ['the', 'Ġcat']
"""

from __future__ import annotations

from tokenizers import Tokenizer

from tokenadapt.options import TrainTokenizerOptions
from tokenadapt.training.modes.base import STANDARD_PATTERN, ChunkSource, ModeSpec, bpe_trainer, empty_tokenizer


def train_regex_bpe(chunks: ChunkSource, vocab_size: int, options: TrainTokenizerOptions, progress: bool) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens (fewer if the text runs out of pairs) on regex pre-tokens."""
    tokenizer = empty_tokenizer(STANDARD_PATTERN)
    tokenizer.train_from_iterator(chunks(), bpe_trainer(vocab_size, options, progress))
    return tokenizer


def train(chunks: ChunkSource, options: TrainTokenizerOptions, progress: bool) -> Tokenizer:
    return train_regex_bpe(chunks, options.vocab_size, options, progress)


SPEC = ModeSpec("bpe", "byte-level BPE behind the Llama-3 regex pre-tokenizer (the control)", train)
