"""`supertoken`: the TokenAdapt paper's supertokens (SuperTokenizer code), with a better span cut by default.

Training text is cut into random spans, BPE learns within each span, and at inference there is no
pre-tokenization (beyond cutting inputs longer than 16k characters): a whole chunk of text is one BPE word, so
frequent multi-word strings ("Ġof the", ", and") become single tokens. Runs of seven or more repeats of one
character are dropped from training.

How the spans are cut decides the gain (`--spans`):
- `chars`, the paper's: lengths from the published 4-23 character distribution (mode 12-13), boundaries anywhere,
  inside or across words. Measured here it saves only a few percent of tokens against regex BPE: most spans cut
  words apart, so the vocabulary fills with word fragments.
- `words` (default): runs of 1 to `max_words` whole words (a word keeps its leading space). Spans never cut a
  word, so BPE learns whole words and frequent phrases; see docs/results.md for the measured difference.

    spans = random_spans("the cat sat on the mat", np.random.default_rng(0))
    "".join(spans) == "the cat sat on the mat"    # True: the spans tile the text
    word_spans("the cat sat on the mat", np.random.default_rng(0), max_words=3)   # e.g. ['the cat', ' sat', ...]
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterator

import numpy as np
from tokenizers import Tokenizer

from tokenadapt.options import TrainTokenizerOptions
from tokenadapt.training.modes.base import ChunkSource, ModeSpec, bpe_trainer, empty_tokenizer

SPAN_LENGTHS = np.arange(4, 24)
# Relative frequency of each span length: rising from 4 to a plateau at 12-13, then falling to 23.
_WEIGHTS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 8.2, 7.4, 6.6, 5.8, 5, 4.2, 3.4, 2.6, 1.8, 1.0])
SPAN_PROBABILITIES = _WEIGHTS / _WEIGHTS.sum()
REPEATED_RUN = re.compile(r"(.)\1{6,}", re.DOTALL)
WORD_BOUNDARY = re.compile(r"(?<=\S)(?=\s)")
# With no pre-tokenizer a whole input is one BPE word, and `tokenizers` slows down and grows in memory on
# multi-megabyte words (13 MB on one line: 2x slower than regex BPE). Cutting inputs into 16k-character pieces
# bounds that and changes almost nothing (a token can no longer cross a cut).
LONG_INPUT_GUARD = r"[\s\S]{1,16384}"


def random_spans(text: str, rng: np.random.Generator) -> list[str]:
    """`text` cut into spans of 4-23 characters (the last of each run may be shorter); repeat runs removed.

    >>> spans = random_spans("abcdefghij" * 10, np.random.default_rng(0))
    >>> "".join(spans) == "abcdefghij" * 10, all(len(s) <= 23 for s in spans)
    (True, True)
    """
    return [span for piece in _without_repeats(text) for span in _cut(piece, rng)]


def _cut(segment: str, rng: np.random.Generator) -> list[str]:
    if not segment:
        return []
    lengths = rng.choice(SPAN_LENGTHS, size=len(segment) // int(SPAN_LENGTHS[0]) + 1, p=SPAN_PROBABILITIES)
    ends = np.cumsum(lengths)
    cuts = [0, *ends[ends < len(segment)].tolist(), len(segment)]
    return [segment[a:b] for a, b in itertools.pairwise(cuts)]


def word_spans(text: str, rng: np.random.Generator, max_words: int) -> list[str]:
    """`text` cut before whitespace that follows a non-space, into runs of 1 to `max_words` words.

    >>> word_spans("a b c d e f", np.random.default_rng(0), max_words=1)
    ['a', ' b', ' c', ' d', ' e', ' f']
    """
    starts = np.array([m.start() for m in WORD_BOUNDARY.finditer(text)], dtype=np.int64)
    if starts.size == 0:
        return [text] if text else []
    ends = np.cumsum(rng.integers(1, max_words + 1, size=starts.size + 1)) - 1
    cuts = [0, *starts[ends[ends < starts.size]].tolist(), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def span_stream(chunks: ChunkSource, options: TrainTokenizerOptions) -> Iterator[list[str]]:
    """The spans of each chunk; each chunk's cuts depend only on the seed and the chunk's text."""
    for text in chunks():
        rng = np.random.default_rng([options.seed, zlib.crc32(text.encode("utf-8"))])
        if options.spans == "chars":
            yield random_spans(text, rng)
        else:
            yield [s for piece in _without_repeats(text) for s in word_spans(piece, rng, options.max_words)]


def _without_repeats(text: str) -> list[str]:
    pieces, start = [], 0
    for run in REPEATED_RUN.finditer(text):
        pieces.append(text[start : run.start()])
        start = run.end()
    return [*pieces, text[start:]]


def train(chunks: ChunkSource, options: TrainTokenizerOptions, progress: bool) -> Tokenizer:
    tokenizer = empty_tokenizer(LONG_INPUT_GUARD)
    trainer = bpe_trainer(options.vocab_size, options, progress, options.max_token_length or None)
    tokenizer.train_from_iterator(span_stream(chunks, options), trainer)
    return tokenizer


SPEC = ModeSpec("supertoken", "the paper's supertokens: BPE within random spans, no pre-tokenizer at inference", train)
