"""`align`: TransTokenizer-style initialisation from a text tokenized with both tokenizers (the monolingual form).

The same text is tokenized with the old and with the new tokenizer. Both tokenizations cover the same bytes, so every
occurrence of a new token overlaps a run of old-token occurrences. Counting, over the text,

    c_tj = sum over occurrences of new token t of  bytes shared with an occurrence of old token j / bytes(t)
    n_t  = sum_j c_tj                                (each occurrence adds 1 in total: n_t = occurrences of t)

the new row is the smoothed, count-weighted mean of the old rows it overlaps:

    e(t) = (sum_j c_tj E_old[j] + lambda f(t)) / (n_t + lambda)

where f(t) is the `--fallback` estimate (hybrid by default) and lambda = `--align-smoothing` (1): a token seen once is
an even mix of the text's evidence and f(t), a token seen 50 times is almost all text. Tokens the text never shows
take f(t) and are counted as "fallback-<name>" in the report.

Worked example: " transplant" occurs twice in the text, both times read by the old tokenizer as " trans" (6 bytes)
+ "plant" (5 bytes): c = (12/11, 10/11), n = 2, and with lambda = 1
e = (12/11 E[" trans"] + 10/11 E["plant"] + f) / 3. Where the old tokenizer reads the same bytes differently in
context (a token that crosses the new token's boundary, such as "ations" around "ation"), the counts say so, which a
decomposition of the token alone cannot.

The counts are built with numpy over byte spans (`token_spans`, `overlap_counts`): no loop over the vocabulary or
over the text's tokens.

**Parallel text** (`--parallel-text`, the cross-lingual form of trans-tokenization): `--text` is in the new
tokenizer's language and `--parallel-text` holds the same content, line for line, in the old model's language. The
two sides share no bytes, so c_tj comes from a statistical token aligner instead: IBM Model 1 with fast_align's
diagonal prior (`parallel_counts`), run by EM over every (new token, old token) pair of each line pair at once.
c_tj is then the expected number of times an occurrence of t aligns to j, and again sums to t's occurrences, so the
estimate above applies unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec, SparseCombination
from tokenadapt.methods.combine import fallback_estimate, sparse_matrix, sparse_rows
from tokenadapt.vocab.canonical import Vocabulary


@dataclass(frozen=True)
class TokenSpans:
    """A tokenized text: token `ids` [N] and the UTF-8 byte span [`starts`, `ends`) of each (offsets into the
    documents joined with a one-byte gap, so no span crosses two documents). `doc_ends` [D]: where each document's
    tokens end in `ids`. `exact` counts documents whose spans came from the tokens' own bytes, the rest came from
    the tokenizer's character offsets."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    doc_ends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    exact: int = 0


def _char_byte_offsets(text: str) -> np.ndarray:
    """[len(text) + 1] int64: the UTF-8 byte offset where each character starts (and the end), vectorised."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    offsets = np.zeros(len(points) + 1, dtype=np.int64)
    np.cumsum(widths, out=offsets[1:])
    return offsets


def token_spans(vocab: Vocabulary, documents: Sequence[str], batch: int = 32) -> TokenSpans:
    """Tokenize `documents` (no special tokens added) and give each token its byte span.

    Spans come from the tokens' canonical bytes (exact, also where a byte-level token holds part of a character)
    when they add up to the document; a SentencePiece dummy prefix (one byte more, a leading space) is absorbed;
    otherwise (a normalizer changed the text, special tokens were split out) from the character offsets.

        >>> spans = token_spans(vocab, ["the cat"])       # GPT-2 style: "the", " cat"
        >>> spans.starts.tolist(), spans.ends.tolist()
        ([0, 3], [3, 7])
    """
    lengths = vocab.byte_lengths
    ids_parts: list[np.ndarray] = []
    start_parts: list[np.ndarray] = []
    end_parts: list[np.ndarray] = []
    exact = 0
    base = 0
    for first in range(0, len(documents), batch):
        chunk = list(documents[first : first + batch])
        for text, encoding in zip(chunk, vocab.backend.encode_batch(chunk, add_special_tokens=False), strict=True):
            n_bytes = len(text.encode("utf-8"))
            ids = np.asarray(encoding.ids, dtype=np.int64)
            widths = lengths[ids] if ids.size else np.zeros(0, dtype=np.int64)
            total = int(widths.sum())
            if total in (n_bytes, n_bytes + 1):
                ends = np.cumsum(widths) - (total - n_bytes)  # a dummy prefix shifts every span back one byte
                starts = np.maximum(ends - widths, 0)
                exact += 1
            else:
                offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                char_bytes = _char_byte_offsets(text)
                starts, ends = char_bytes[offsets[:, 0]], char_bytes[offsets[:, 1]]
            ids_parts.append(ids)
            start_parts.append(starts + base)
            end_parts.append(ends + base)
            base += n_bytes + 1
    if not ids_parts:
        empty = np.zeros(0, dtype=np.int64)
        return TokenSpans(empty, empty, empty, empty, 0)
    doc_ends = np.cumsum([part.size for part in ids_parts]).astype(np.int64)
    return TokenSpans(
        np.concatenate(ids_parts), np.concatenate(start_parts), np.concatenate(end_parts), doc_ends, exact
    )


def overlap_counts(new: TokenSpans, old: TokenSpans) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new ids [P], old ids [P], counts [P]): c_tj of the module docstring for every pair (t, j) that overlaps.

    The union of both tokenizations' boundaries cuts the text into segments that each lie inside at most one new
    and one old token; a segment of b bytes inside new token t (of B bytes) and old token j adds b / B to c_tj.

        >>> new = TokenSpans(np.array([7]), np.array([0]), np.array([11]))               # " transplant"
        >>> old = TokenSpans(np.array([1, 2]), np.array([0, 6]), np.array([6, 11]))       # " trans", "plant"
        >>> overlap_counts(new, old)
        (array([7, 7]), array([1, 2]), array([0.54545455, 0.45454545]))
    """
    if new.ids.size == 0 or old.ids.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    bounds = np.union1d(np.concatenate([new.starts, new.ends]), np.concatenate([old.starts, old.ends]))
    seg_start, seg_end = bounds[:-1], bounds[1:]
    # the token holding a segment is the first whose end lies beyond the segment's start (ends are non-decreasing)
    in_new = np.minimum(np.searchsorted(new.ends, seg_start, side="right"), new.ids.size - 1)
    in_old = np.minimum(np.searchsorted(old.ends, seg_start, side="right"), old.ids.size - 1)
    inside = (
        (new.starts[in_new] <= seg_start)
        & (new.ends[in_new] >= seg_end)
        & (old.starts[in_old] <= seg_start)
        & (old.ends[in_old] >= seg_end)
    )
    in_new, in_old = in_new[inside], in_old[inside]
    shares = (seg_end - seg_start)[inside] / np.maximum(new.ends[in_new] - new.starts[in_new], 1)
    new_ids, old_ids = new.ids[in_new], old.ids[in_old]
    width = int(old_ids.max(initial=0)) + 1
    unique, inverse = np.unique(new_ids * width + old_ids, return_inverse=True)
    counts = np.bincount(inverse, weights=shares, minlength=unique.size)
    return unique // width, unique % width, counts


def parallel_counts(
    new_lines: Sequence[np.ndarray],
    old_lines: Sequence[np.ndarray],
    iterations: int = 5,
    diagonal_tension: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new ids [P], old ids [P], counts [P]): expected alignment counts c_tj between line-aligned token sequences.

    `new_lines[i]` and `old_lines[i]` are token ids of the same sentence in the two languages. The aligner is IBM
    Model 1 over tokens with fast_align's prior: the posterior that new position a of a line (m tokens) aligns to
    old position b (n tokens) is proportional to tau(t_a | s_b) * exp(-tension * |(a+1/2)/m - (b+1/2)/n|), and
    tau(t | s) = c_ts / sum_t' c_t's is re-estimated from the expected counts `iterations` times. Every pair of
    positions of every line pair is one array entry, so memory is sum m*n entries (a few MB per 100 KB of text).

        >>> new = [np.array([10, 11]), np.array([10])]      # "das Haus", "das"
        >>> old = [np.array([1, 2]), np.array([1])]         # "the house", "the"
        >>> t, s, c = parallel_counts(new, old)
        >>> dict(zip(zip(t.tolist(), s.tolist()), c.round(2).tolist()))   # "das" -> "the", "Haus" -> "house"
        {(10, 1): 2.0, (10, 2): 0.0, (11, 1): 0.0, (11, 2): 1.0}
    """
    if len(new_lines) != len(old_lines):
        raise ValueError(f"{len(new_lines)} new-side lines but {len(old_lines)} old-side lines")
    m = np.asarray([line.size for line in new_lines], dtype=np.int64)
    n = np.asarray([line.size for line in old_lines], dtype=np.int64)
    live = (m > 0) & (n > 0)
    empty = np.zeros(0, dtype=np.int64)
    if not live.any():
        return empty, empty, np.zeros(0)
    new_flat = np.concatenate([line for line, keep in zip(new_lines, live, strict=True) if keep]).astype(np.int64)
    old_flat = np.concatenate([line for line, keep in zip(old_lines, live, strict=True) if keep]).astype(np.int64)
    m, n = m[live], n[live]
    pairs_per_line = m * n
    line = np.repeat(np.arange(m.size), pairs_per_line)
    local = np.arange(int(pairs_per_line.sum())) - np.repeat(np.cumsum(pairs_per_line) - pairs_per_line, pairs_per_line)
    row, col = local // n[line], local % n[line]
    new_pos = (np.cumsum(m) - m)[line] + row  # index into new_flat: the occurrence being aligned
    old_pos = (np.cumsum(n) - n)[line] + col
    prior = np.exp(-diagonal_tension * np.abs((row + 0.5) / m[line] - (col + 0.5) / n[line]))
    del line, local, row, col
    width = int(old_flat.max()) + 1
    keys, pair_key = np.unique(new_flat[new_pos] * width + old_flat[old_pos], return_inverse=True)
    key_old = keys % width
    tau: np.ndarray = np.ones(keys.size)
    counts: np.ndarray = np.zeros(keys.size)
    for _ in range(max(iterations, 1)):
        weight = tau[pair_key] * prior
        posterior = weight / np.bincount(new_pos, weights=weight, minlength=new_flat.size)[new_pos]
        counts = np.bincount(pair_key, weights=posterior, minlength=keys.size)
        tau = counts / np.bincount(key_old, weights=counts)[key_old]
    return keys // width, key_old, counts


def text_counts(
    new_spans: TokenSpans,
    old_spans: TokenSpans,
    new_ids: np.ndarray,
    old_candidates: torch.Tensor,
) -> SparseCombination:
    """The count matrix [U, V] of the U tokens `new_ids` over the old rows where `old_candidates` [V] is True.

    `found` marks tokens the text shows; `score` is n_t, their occurrences (counted through usable old rows).
    """
    return count_matrix(*overlap_counts(new_spans, old_spans), new_ids, old_candidates)


def count_matrix(
    pair_new: np.ndarray,
    pair_old: np.ndarray,
    counts: np.ndarray,
    new_ids: np.ndarray,
    old_candidates: torch.Tensor,
) -> SparseCombination:
    """`text_counts` from (new id, old id, count) triples, as `overlap_counts` or `parallel_counts` give them."""
    rows_of = np.full(int(max(new_ids.max(initial=-1), pair_new.max(initial=-1))) + 1, -1, dtype=np.int64)
    rows_of[new_ids] = np.arange(new_ids.size)
    usable = old_candidates.numpy()
    keep = (pair_old < usable.size) & (rows_of[pair_new] >= 0)
    keep[keep] &= usable[pair_old[keep]]
    rows = torch.from_numpy(rows_of[pair_new[keep]])
    matrix = sparse_matrix(
        rows, torch.from_numpy(pair_old[keep]), torch.from_numpy(counts[keep]), (new_ids.size, usable.size)
    )
    occurrences = torch.zeros(new_ids.size, dtype=torch.float32)
    occurrences.index_add_(0, rows, torch.from_numpy(counts[keep]).to(torch.float32))
    return SparseCombination(matrix=matrix, found=occurrences > 0, score=occurrences)


def estimate_align(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    assert inputs.text_counts is not None
    counts = inputs.text_counts
    smoothing = inputs.options.align_smoothing
    seen = counts.found
    summed = sparse_rows(counts.matrix, old)
    paths = {"align": int(seen.sum()), f"fallback-{inputs.options.fallback}": inputs.count - int(seen.sum())}
    if smoothing == 0 and bool(seen.all()):
        return Estimate(summed / counts.score.clamp(min=1e-12)[:, None], paths)
    fallback = fallback_estimate(old, inputs).rows
    rows = (summed + smoothing * fallback) / (counts.score + smoothing).clamp(min=1e-12)[:, None]
    return Estimate(torch.where(seen[:, None], rows, fallback), paths)


SPEC = MethodSpec(
    name="align",
    fn=estimate_align,
    needs=frozenset({"text"}),
    summary="TransTokenizer-style: mean of the old tokens each new token overlaps in --text (dev split), or is "
    "aligned with in its translation --parallel-text",
    uses_fallback=True,
)
