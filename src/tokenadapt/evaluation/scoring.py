"""Score a causal LM on a text: the one scoring implementation used by the CLI, the demo and the benchmarks.

Bits per byte is the measure that compares models whose tokenizers differ: the summed next-token negative
log-likelihood (in bits) of every scored token, divided by the UTF-8 bytes those tokens cover. Token-level
perplexity depends on the tokenizer and is reported alongside, as the paper's tables do.

Windowing: the text's tokens are scored left to right in windows of `context` tokens; each window scores the
`stride` tokens at its end (stride is capped at context - 1), so every token is scored exactly once and, past the
first window, with at least context - stride tokens of history. Without a bos token the first token has no
prediction: it is not scored, and its bytes are not counted.

    >>> score = score_text(model, tokenizer, "Hello world. " * 100, EvalOptions(context=64, stride=32))
    >>> round(score.bits_per_byte, 3), score.scored_tokens
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenadapt.errors import InputError
from tokenadapt.options import EvalOptions


@dataclass(frozen=True)
class TextScore:
    """Scoring figures for one text: nll in nats over `scored_tokens` tokens that cover `scored_bytes` bytes.

    `document_nll[i]` / `document_tokens[i]`: the part of `nll` and `scored_tokens` falling in document i (a
    token belongs to the document holding its last byte); `words` counts whitespace-separated words.
    """

    nll: float
    scored_tokens: int
    scored_bytes: int
    tokens: int
    bytes: int
    bos: bool
    words: int = 0
    document_nll: tuple[float, ...] = ()
    document_tokens: tuple[int, ...] = ()

    @property
    def document_perplexities(self) -> list[float]:
        """Token-level perplexity of each document that has a scored token."""
        return [math.exp(n / t) for n, t in zip(self.document_nll, self.document_tokens, strict=True) if t]

    @property
    def mean_perplexity(self) -> float:
        """Mean over documents of their token-level perplexity (the paper's tables report it)."""
        values = self.document_perplexities
        return float(np.mean(values)) if values else self.perplexity

    @property
    def median_perplexity(self) -> float:
        values = self.document_perplexities
        return float(np.median(values)) if values else self.perplexity

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(self.words, 1)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(self.scored_bytes, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / max(self.scored_tokens, 1))

    @property
    def tokens_per_byte(self) -> float:
        return self.tokens / max(self.bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits_per_byte": self.bits_per_byte,
            "perplexity": self.perplexity,
            "tokens_per_byte": self.tokens_per_byte,
            "tokens_per_word": self.tokens_per_word,
            "mean_perplexity": self.mean_perplexity,
            "median_perplexity": self.median_perplexity,
            "documents": len(self.document_tokens),
            "nll_nats": self.nll,
            "scored_tokens": self.scored_tokens,
            "scored_bytes": self.scored_bytes,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "bos": self.bos,
            "words": self.words,
        }


def wants_bos(tokenizer: Any, policy: str) -> bool:
    """Whether to prepend bos: 'always', 'never', or 'auto' (when the tokenizer itself adds it)."""
    if policy == "never" or tokenizer.bos_token_id is None:
        return False
    if policy == "always":
        return True
    probe = tokenizer("a", add_special_tokens=True).input_ids
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def encode_with_byte_ends(tokenizer: Any, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids of `text` (no special tokens) and, per token, the UTF-8 byte offset where it ends."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoding["input_ids"])
    char_ends = np.array([end for _, end in encoding["offset_mapping"]], dtype=np.int64)
    byte_offsets = np.zeros(len(text) + 1, dtype=np.int64)
    if text:
        byte_offsets[1:] = np.cumsum([len(c.encode("utf-8")) for c in text])
    return ids, byte_offsets[np.clip(char_ends, 0, len(text))]


def windows(n_positions: int, first_scored: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(input_start, input_end, first_scored_position) per window; targets are positions [first, input_end).

    >>> windows(10, 1, context=4, stride=3)
    [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    """
    stride = max(1, min(stride, context - 1))
    spans: list[tuple[int, int, int]] = []
    first = first_scored
    while first < n_positions:
        end = min(first + stride, n_positions)
        start = max(0, end - context)
        spans.append((start, end, first))
        first = end
    return spans


@torch.inference_mode()
def score_text(
    model: Any,
    tokenizer: Any,
    text: str,
    options: EvalOptions | None = None,
    progress: bool = False,
    document_ends: Sequence[int] | None = None,
) -> TextScore:
    """Score `text` with `model`; see the module docstring for the windowing and byte accounting.

    `document_ends` are the UTF-8 byte offsets where the documents joined in `text` end (default: one document);
    each scored token's nll is credited to the document holding its last byte.
    """
    options = (options or EvalOptions()).validated()
    losses = token_losses(model, tokenizer, text, options, progress=progress)
    ids, byte_ends, bos = losses.ids, losses.byte_ends, losses.bos
    total_bytes = len(text.encode("utf-8"))
    nll = float(losses.nll.sum())
    scored = slice(0 if bos else 1, None)  # without bos the first text token has no prediction
    ends = np.asarray(document_ends if document_ends else [total_bytes], dtype=np.int64)
    # credit each scored token to the document that holds its last byte
    documents = np.searchsorted(ends, byte_ends[scored] - 1, side="right").clip(max=len(ends) - 1)
    document_nll = np.bincount(documents, weights=losses.nll[scored], minlength=len(ends))
    document_tokens = np.bincount(documents, minlength=len(ends))
    text_tokens_scored = len(ids) if bos else len(ids) - 1
    scored_bytes = total_bytes if bos else total_bytes - int(byte_ends[0])
    return TextScore(
        nll=nll,
        scored_tokens=text_tokens_scored,
        scored_bytes=scored_bytes,
        tokens=len(ids),
        bytes=total_bytes,
        bos=bos,
        words=len(text.split()),
        document_nll=tuple(float(x) for x in document_nll),
        document_tokens=tuple(int(x) for x in document_tokens),
    )


@dataclass(frozen=True)
class TokenLosses:
    """Per text token [T]: `ids`, the UTF-8 byte offset where each ends, and its nll (0 for a first token that
    nothing predicts, without bos); `rival_nll` [T] the nll of each position's rival id (NaN where none)."""

    ids: list[int]
    byte_ends: np.ndarray
    bos: bool
    nll: np.ndarray
    rival_nll: np.ndarray | None = None


def token_losses(
    model: Any,
    tokenizer: Any,
    text: str,
    options: EvalOptions,
    rivals: np.ndarray | None = None,
    progress: bool = False,
) -> TokenLosses:
    """Encode `text`, prepend bos as `options.bos` says, and score every position (`sequence_losses`).

    `rivals` [V] maps a target id to a rival id (-1: none), for `TokenLosses.rival_nll`. Raises `InputError` for
    an empty or one-token text and for a tokenizer that emits ids the model has no rows for.
    """
    if not text.strip():
        raise InputError("The text to score is empty.", "Pass a text with some content.")
    ids, byte_ends = encode_with_byte_ends(tokenizer, text)
    bos = wants_bos(tokenizer, options.bos)
    sequence = torch.tensor(([tokenizer.bos_token_id] if bos else []) + ids, dtype=torch.long)
    if sequence.numel() < 2:
        raise InputError("The text is too short to score (fewer than two tokens).", "Pass a longer text.")
    rows = model.get_input_embeddings().weight.shape[0]
    if int(sequence.max()) >= rows:
        raise InputError(
            f"The tokenizer emits id {int(sequence.max())} but the model has only {rows} embedding rows.",
            "The model and tokenizer do not belong together: pass the tokenizer saved with the model.",
        )
    alternatives = None if rivals is None else torch.from_numpy(rivals[sequence.numpy()])
    # position 0 is bos (scored from it) or the first text token (no prediction for it)
    nll, rival_nll = sequence_losses(model, sequence, 1, options, alternatives, progress)
    skip = int(bos)  # sequence position p holds text token p - bos
    return TokenLosses(ids, byte_ends, bos, nll[skip:], None if rival_nll is None else rival_nll[skip:])


@torch.inference_mode()
def sequence_losses(
    model: Any,
    sequence: torch.Tensor,
    first_scored: int,
    options: EvalOptions,
    alternatives: torch.Tensor | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per position, the nll [T] of `sequence` [T] (zero before `first_scored`), windowed as the module says.

    `alternatives` [T] (optional) names a second id per position, -1 for none: its nll comes back too, at the
    same positions, so an analysis can ask how much probability went to a rival of the target (NaN where none).

    >>> nll, rival = sequence_losses(model, torch.tensor([5, 9, 2]), 1, EvalOptions(), torch.tensor([-1, 4, -1]))
    >>> nll.shape, float(rival[1]) > 0, np.isnan(rival[2])   # ((3,), True, True)
    """
    spans = windows(sequence.numel(), first_scored, options.context, options.stride)
    token_nll = np.zeros(sequence.numel(), dtype=np.float64)
    rival_nll = None if alternatives is None else np.full(sequence.numel(), np.nan, dtype=np.float64)
    for start, end, first in tqdm(spans, desc="score", unit="win", disable=not progress):
        keep = end - first + 1  # logits for the positions that predict the scored targets (and one more)
        logits = _forward_logits(model, sequence[start:end].unsqueeze(0), keep)[0, -keep:-1].float()
        targets = sequence[first:end]
        token_nll[first:end] = torch.nn.functional.cross_entropy(logits, targets, reduction="none").numpy()
        if alternatives is not None and rival_nll is not None:
            rivals = alternatives[first:end]
            named = rivals >= 0
            log_probs = torch.log_softmax(logits[named], dim=-1)
            rival_nll[first:end][named.numpy()] = -log_probs.gather(1, rivals[named, None])[:, 0].numpy()
    return token_nll, rival_nll


def _forward_logits(model: Any, input_ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions; the model skips the rest (a [T, V] block is large for 128k+ vocabs)."""
    try:
        return model(input_ids=input_ids, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep
        return model(input_ids=input_ids).logits[:, -keep:]
