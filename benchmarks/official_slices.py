"""Benchmark: our transplants on slices built the way the official TokenAdapt run's are described.

`../shared/reference/anchors.md` reports the official code on "the first 20,000 UTF-8 bytes" of English Wikipedia,
the English Python docs, German and Japanese debian-reference and Python standard-library source. This script
builds such slices from the built-in texts (the first 20,000 bytes of each whole text, not of its test split) and
from this interpreter's standard library (its top-level `*.py` files in name order), scores the original model
and each given model on them, and prints the original's bits per byte beside the official run's (how close the
slices are) and each model's ratio beside the official hybrid's.

The Python docs slice is the tutorial's pages in name order. anchors.md gives the official slice's tokens per byte,
0.236 with SmolLM2's tokenizer and 0.219 with Qwen2's. Two candidates give exactly those (`pydocs_slices.py`): the
tutorial, on which the original scores 0.936 bits per byte (official 0.941), and a run of library pages, on which
it scores 0.887. The whole docs in name order start with the C API
reference instead (0.259, 0.238; 1.009 bits per byte), a different text.

    python benchmarks/official_slices.py ~/.cache/tokenadapt/bench-work/heal/smollm2-qwen2-hybrid
    python benchmarks/official_slices.py OUT --json benchmarks/results/official_slices.json
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path

from tokenadapt.evaluation.evaluator import load_scored_model, score_corpus
from tokenadapt.options import EvalOptions
from tokenadapt.report import markdown_table
from tokenadapt.zoo.texts import TextCorpus, load_text

SLICE_BYTES = 20_000
TEXTS = ["wiki-en", "pydocs-en", "debref-de", "debref-ja"]
PYDOCS_PAGES = "tutorial/"  # see the module docstring
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


def builtin_slice(name: str) -> TextCorpus:
    """The whole built-in text, or for the Python docs the tutorial's pages (see the module docstring)."""
    corpus = load_text(name, split="all")
    if name != "pydocs-en":
        return corpus
    pages = [(i, d) for i, d in zip(corpus.doc_ids, corpus.documents, strict=True) if i.startswith(PYDOCS_PAGES)]
    ids, documents = zip(*pages, strict=True)
    return TextCorpus("pydocs-en (tutorial)", "all", tuple(documents), corpus.source, tuple(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="transplanted model directories to score")
    parser.add_argument("--reference", default="smollm2-135m", help="the original model")
    parser.add_argument("--json", type=Path, help="also write every bits-per-byte figure and ratio here")
    args = parser.parse_args()
    corpora = [builtin_slice(name) for name in TEXTS] + [stdlib_corpus()]
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
    if args.json:
        summary = {
            "texts": names,
            "slice_bytes": SLICE_BYTES,
            "official": {"original_bits_per_byte": OFFICIAL_ORIGINAL, "hybrid_ratio": OFFICIAL_HYBRID},
            "bits_per_byte": scores,
            "ratio": {
                spec: [value / base for value, base in zip(scores[spec], original, strict=True)] for spec in args.models
            },
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
