"""`tokenadapt tokenizer-report`: how well tokenizers compress text, before any model is involved.

Per tokenizer and text: bytes per token, tokens per byte and per word (words are whitespace-separated runs),
encode speed, unigram (Shannon) entropy of the token distribution, Rényi efficiency (Zouhar et al. 2023:
H_2.5(p) / log2 |V|; higher means the vocabulary is used more evenly, which correlates with downstream quality),
and the share of the vocabulary the text uses. Across the parallel `debref-*` texts: the token premium, each
language's tokens for the same chapters divided by English's. Per pair of tokenizers: the vocabulary overlap by
exact string and by the bytes the tokens stand for.

    report = tokenizer_report(["llama3", "out/super32k"], ["wiki-en", "debref-de"])
    report.stats[0].bytes_per_token
    print(report.to_markdown())
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenadapt.report import Timings, markdown_table, peak_rss_mb, versions
from tokenadapt.zoo.texts import TextCorpus, load_text

RENYI_ALPHA = 2.5
PREMIUM_REFERENCE = "debref-en"


def unigram_entropy(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution proportional to `counts` (zeros ignored).

    >>> round(unigram_entropy(np.array([1, 1, 2, 0])), 3)
    1.5
    """
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def renyi_efficiency(counts: np.ndarray, vocab_size: int, alpha: float = RENYI_ALPHA) -> float:
    """Rényi entropy of order `alpha` of the token distribution, divided by log2 of the vocabulary size.

    >>> renyi_efficiency(np.array([5, 5, 5, 5]), vocab_size=4)   # uniform over the whole vocabulary
    1.0
    """
    p = counts[counts > 0] / counts.sum()
    renyi = float(np.log2((p**alpha).sum()) / (1.0 - alpha))
    return renyi / float(np.log2(vocab_size))


@dataclass
class TokenizerStats:
    """One tokenizer on one text."""

    tokenizer: str
    text: str
    bytes: int
    words: int
    tokens: int
    bytes_per_token: float
    tokens_per_byte: float
    tokens_per_word: float
    encode_mb_per_s: float
    unigram_entropy_bits: float
    renyi_efficiency: float
    vocab_used: float
    round_trip: bool


@dataclass
class TokenizerReport:
    tokenizers: list[dict[str, Any]]
    texts: list[dict[str, Any]]
    stats: list[TokenizerStats]
    premium: dict[str, dict[str, float]] = field(default_factory=dict)
    overlap: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        headers = ["tokenizer", "text", "bytes/token", "tokens/word", "MB/s", "entropy", "Rényi eff.", "vocab used"]
        rows = [
            [
                s.tokenizer,
                s.text,
                s.bytes_per_token,
                s.tokens_per_word,
                f"{s.encode_mb_per_s:.2f}",
                s.unigram_entropy_bits,
                s.renyi_efficiency,
                f"{100 * s.vocab_used:.1f}%",
            ]
            for s in self.stats
        ]
        parts = ["## Tokenizer report", "", markdown_table(headers, rows)]
        if self.premium:
            languages = sorted({lang for p in self.premium.values() for lang in p})
            table = [[t, *(f"{p.get(lang, float('nan')):.2f}x" for lang in languages)] for t, p in self.premium.items()]
            parts += [
                "",
                f"Token premium (tokens relative to {PREMIUM_REFERENCE}):",
                "",
                markdown_table(["tokenizer", *languages], table),
            ]
        if self.overlap:
            table = [[o["a"], o["b"], o["exact"], o["bytes"]] for o in self.overlap]
            parts += [
                "",
                markdown_table(["tokenizer A", "tokenizer B", "shared (exact string)", "shared (bytes)"], table),
            ]
        return "\n".join(parts)


def text_stats(name: str, tokenizer: Any, corpus: TextCorpus) -> TokenizerStats:
    """Encode every document of `corpus` (no special tokens added) and summarise; see the module docstring."""
    backend = tokenizer.backend_tokenizer
    documents = list(corpus.documents)
    start = time.perf_counter()
    encodings = backend.encode_batch(documents, add_special_tokens=False)
    seconds = max(time.perf_counter() - start, 1e-9)
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
    vocab_size = max(len(tokenizer), int(ids.max()) + 1 if ids.size else 1)
    counts = np.bincount(ids, minlength=vocab_size)
    decoded = backend.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    n_bytes = corpus.n_bytes
    words = sum(len(d.split()) for d in documents)
    tokens = int(ids.size)
    return TokenizerStats(
        tokenizer=name,
        text=corpus.name,
        bytes=n_bytes,
        words=words,
        tokens=tokens,
        bytes_per_token=n_bytes / max(tokens, 1),
        tokens_per_byte=tokens / max(n_bytes, 1),
        tokens_per_word=tokens / max(words, 1),
        encode_mb_per_s=sum(len(d.encode("utf-8")) for d in documents) / 1e6 / seconds,
        unigram_entropy_bits=unigram_entropy(counts) if tokens else 0.0,
        renyi_efficiency=renyi_efficiency(counts, vocab_size) if tokens else 0.0,
        vocab_used=float((counts > 0).sum()) / vocab_size,
        round_trip=decoded == documents,
    )


def token_premium(stats: Sequence[TokenizerStats]) -> dict[str, dict[str, float]]:
    """Per tokenizer, the tokens each `debref-LANG` text takes divided by the tokens `debref-en` takes.

    Only tokenizers scored on debref-en and at least one other language appear.
    """
    premium: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(s.tokenizer for s in stats):
        mine = {s.text: s.tokens for s in stats if s.tokenizer == name and s.text.startswith("debref-")}
        if PREMIUM_REFERENCE in mine and len(mine) > 1:
            premium[name] = {t.removeprefix("debref-"): n / mine[PREMIUM_REFERENCE] for t, n in mine.items()}
    return premium


def vocabulary_overlap(a: Any, b: Any) -> dict[str, int]:
    """Tokens two tokenizers share: by exact vocabulary string, and by the bytes they stand for."""
    from tokenadapt.vocab import build_vocabulary

    va, vb = build_vocabulary(a), build_vocabulary(b)
    exact = {t for i, t in enumerate(va.tokens) if t is not None and i not in va.special_ids}
    exact &= {t for i, t in enumerate(vb.tokens) if t is not None and i not in vb.special_ids}
    by_bytes = {c for c in va.canonical if c is not None} & {c for c in vb.canonical if c is not None}
    return {"exact": len(exact), "bytes": len(by_bytes)}


def tokenizer_report(
    tokenizers: Sequence[str | Path],
    texts: Sequence[str | Path],
    max_bytes: int = 0,
    progress: bool = False,
) -> TokenizerReport:
    """Compare `tokenizers` on `texts` (built-in names or local paths); `max_bytes` truncates each text
    except the parallel `debref-*` ones."""
    from tqdm.auto import tqdm

    from tokenadapt.tokenizer_io import load_tokenizer, resolve_tokenizer

    timings = Timings()
    with timings.stage("load"):
        resolved = [resolve_tokenizer(t) for t in tokenizers]
        loaded = [load_tokenizer(r) for r in resolved]
        corpora = [load_text(t) for t in texts]
        # Parallel texts stay whole, so the premium compares the same chapters in every language.
        corpora = [c.truncated(max_bytes) if max_bytes and not c.name.startswith("debref-") else c for c in corpora]
    stats: list[TokenizerStats] = []
    with timings.stage("encode"):
        cells = list(itertools.product(zip(resolved, loaded, strict=True), corpora))
        for (res, tok), corpus in tqdm(cells, desc="Encoding", disable=not progress):
            stats.append(text_stats(res.name, tok, corpus))
    premium = token_premium(stats)
    overlap = []
    with timings.stage("overlap"):
        for (ra, ta), (rb, tb) in itertools.combinations(zip(resolved, loaded, strict=True), 2):
            overlap.append({"a": ra.name, "b": rb.name, **vocabulary_overlap(ta, tb)})
    return TokenizerReport(
        tokenizers=[{"name": r.name, "path": str(r.path), "format": r.format, "sha256": r.sha256} for r in resolved],
        texts=[{"name": c.name, **c.source} for c in corpora],
        stats=stats,
        premium=premium,
        overlap=overlap,
        timings=timings,
        peak_rss_mb=round(peak_rss_mb(), 1),
        versions=versions(),
    )
