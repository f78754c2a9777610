"""Benchmark: our transplants on slices built the way the official TokenAdapt run's are described.

`../shared/reference/anchors.md` reports the official code on "the first 20,000 UTF-8 bytes" of English Wikipedia,
the English Python docs, German and Japanese debian-reference and Python standard-library source. This script
builds such slices from the built-in texts (the first 20,000 bytes of each whole text, not of its test split) and
from this interpreter's standard library (its top-level `*.py` files in name order), scores the original model
and each given model on them, and prints the original's bits per byte beside the official run's (how close the
slices are) and each model's ratio beside the official hybrid's.

    python benchmarks/official_slices.py ~/.cache/tokenadapt/bench-work/heal/smollm2-qwen2-hybrid
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

from tokenadapt.evaluation.evaluator import load_scored_model, score_corpus
from tokenadapt.options import EvalOptions
from tokenadapt.report import markdown_table
from tokenadapt.zoo.texts import TextCorpus, load_text

SLICE_BYTES = 20_000
TEXTS = ["wiki-en", "pydocs-en", "debref-de", "debref-ja"]
OFFICIAL_ORIGINAL = [0.960, 0.941, 1.895, 1.684, 0.924]  # anchors.md: bits per byte of SmolLM2-135M
OFFICIAL_HYBRID = [1.19, 1.29, 1.57, 1.63, 1.67]  # anchors.md: official TokenAdapt hybrid, ratio to the original


def stdlib_corpus(min_bytes: int = 2 * SLICE_BYTES) -> TextCorpus:
    """The standard library's top-level modules in name order, enough of them for one slice."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    documents: list[str] = []
    for path in paths:
        documents.append(path.read_text(encoding="utf-8", errors="replace"))
        if sum(len(d.encode("utf-8")) for d in documents) >= min_bytes:
            break
    return TextCorpus("code (stdlib)", "all", tuple(documents), {}, tuple(p.name for p in paths[: len(documents)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="transplanted model directories to score")
    parser.add_argument("--reference", default="smollm2-135m", help="the original model")
    args = parser.parse_args()
    corpora = [load_text(name, split="all") for name in TEXTS] + [stdlib_corpus()]
    options = EvalOptions(max_bytes=SLICE_BYTES).validated()
    scores: dict[str, list[float]] = {}
    for spec in [args.reference, *args.models]:
        model, tokenizer = load_scored_model(spec)
        scores[spec] = [score_corpus(model, tokenizer, corpus, options, False).bits_per_byte for corpus in corpora]
        del model
    names = [corpus.name for corpus in corpora]
    original = scores[args.reference]
    rows: list[list[object]] = [
        ["original, official slices (bits/byte)", *OFFICIAL_ORIGINAL, ""],
        ["original, these slices (bits/byte)", *(round(value, 3) for value in original), ""],
        ["official hybrid (ratio)", *(f"{r:.2f}x" for r in OFFICIAL_HYBRID), f"{sum(OFFICIAL_HYBRID) / 5:.2f}x"],
    ]
    for spec in args.models:
        ratios = [value / base for value, base in zip(scores[spec], original, strict=True)]
        rows.append([Path(spec).name, *(f"{r:.3f}x" for r in ratios), f"{sum(ratios) / len(ratios):.3f}x"])
    print(markdown_table(["", *names, "avg"], rows))


if __name__ == "__main__":
    main()
