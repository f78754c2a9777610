"""`tokenadapt eval`: score a model (and optionally a reference) on texts; ratios when a reference is given.

>>> result = evaluate("out/smollm2-llama3", ["wiki-en"], reference="smollm2-135m")
>>> result.rows[0].ratio("bits_per_byte")
1.18
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenadapt.checkpoint import load_causal_lm
from tokenadapt.evaluation.scoring import TextScore, score_text
from tokenadapt.options import EvalOptions
from tokenadapt.report import Timings, markdown_table, peak_rss_mb, versions
from tokenadapt.tokenizer_io import load_tokenizer
from tokenadapt.zoo import resolve_model
from tokenadapt.zoo.texts import TextCorpus, load_text

RATIO_KEYS = (
    "bits_per_byte",
    "perplexity",
    "mean_perplexity",
    "median_perplexity",
    "tokens_per_byte",
    "tokens_per_word",
)


@dataclass
class TextRow:
    """One text's figures for the model and, if given, the reference."""

    text: str
    bytes: int
    model: dict[str, Any]
    reference: dict[str, Any] | None = None

    def ratio(self, key: str) -> float | None:
        if self.reference is None or not self.reference.get(key):
            return None
        return float(self.model[key]) / float(self.reference[key])


@dataclass
class EvalResult:
    model: str
    reference: str | None
    options: dict[str, Any]
    rows: list[TextRow] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for row, source in zip(data["rows"], self.rows, strict=True):
            row["ratios"] = {k: source.ratio(k) for k in RATIO_KEYS}
        return data

    def to_markdown(self) -> str:
        headers = ["text", "bytes", "bits/byte", "tokens/byte", "tokens/word", "PPL", "mean doc PPL", "median doc PPL"]
        if self.reference:
            headers += ["ref bits/byte", "ref tokens/byte", "bits/byte ratio", "tokens/byte ratio", "mean PPL ratio"]
        rows = []
        for row in self.rows:
            line: list[Any] = [
                row.text,
                row.bytes,
                row.model["bits_per_byte"],
                row.model["tokens_per_byte"],
                row.model["tokens_per_word"],
                row.model["perplexity"],
                row.model["mean_perplexity"],
                row.model["median_perplexity"],
            ]
            if row.reference is not None:
                line += [
                    row.reference["bits_per_byte"],
                    row.reference["tokens_per_byte"],
                    f"{row.ratio('bits_per_byte'):.3f}x",
                    f"{row.ratio('tokens_per_byte'):.3f}x",
                    f"{row.ratio('mean_perplexity'):.3f}x",
                ]
            rows.append(line)
        title = f"## {self.model}" + (f" vs {self.reference}" if self.reference else "")
        return title + "\n\n" + markdown_table(headers, rows)


def load_scored_model(spec: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) for a built-in name, a model directory, a .gguf file or a Hub id."""
    resolved = resolve_model(str(spec))
    return load_causal_lm(resolved.path), load_tokenizer(resolved.path)


def score_corpus(model: Any, tokenizer: Any, corpus: TextCorpus, options: EvalOptions, progress: bool) -> TextScore:
    """Score a corpus (its first `options.max_bytes` bytes), with per-document perplexities."""
    if options.max_bytes:
        corpus = corpus.truncated(options.max_bytes)
    sizes = np.array([len(d.encode("utf-8")) for d in corpus.documents], dtype=np.int64)
    ends = np.cumsum(sizes + 2) - 2  # documents are joined with "\n\n"; a separator goes with the next document
    return score_text(model, tokenizer, corpus.text, options, progress=progress, document_ends=ends.tolist())


def evaluate(
    model: str | Path,
    texts: list[str],
    reference: str | Path | None = None,
    options: EvalOptions | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score `model` (and `reference`) on each text (a built-in name or a local path)."""
    options = (options or EvalOptions()).validated()
    timings = Timings()
    with timings.stage("texts"):
        corpora = [load_text(t) for t in texts]
    result = EvalResult(
        model=str(model),
        reference=None if reference is None else str(reference),
        options=dataclasses.asdict(options),
    )
    scored: dict[str, list[TextScore]] = {}
    for label, spec in (("model", model), ("reference", reference)):
        if spec is None:
            continue
        with timings.stage(f"load {label}"):
            lm, tokenizer = load_scored_model(spec)
        with timings.stage(f"score {label}"):
            scored[label] = [score_corpus(lm, tokenizer, c, options, progress) for c in corpora]
        del lm
    for index, corpus in enumerate(corpora):
        ref = scored.get("reference")
        result.rows.append(
            TextRow(
                text=corpus.name,
                bytes=scored["model"][index].bytes,
                model=scored["model"][index].to_dict(),
                reference=None if ref is None else ref[index].to_dict(),
            )
        )
    result.timings = timings
    result.peak_rss_mb = round(peak_rss_mb(), 1)
    result.versions = versions()
    return result
