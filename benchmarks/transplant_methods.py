"""Benchmark: transplant a built-in model onto built-in tokenizers with every method; time, memory and quality.

For each (target tokenizer, method) it runs `tokenadapt transplant` in a fresh subprocess (so peak RSS is that run's
own), then scores the original and every transplanted model with the one scoring implementation
(`tokenadapt.evaluation`) on the same texts, and prints a Markdown table of bits per byte, the ratio to the
original, and tokens per byte. The first `hybrid` run of each target clears the auxiliary-embedding and neighbour
caches, so it is the cold-cache time; a second `hybrid` run is the warm-cache time. (Before 2026-11-27 only the
embeddings were cleared, so the cold figures of earlier results reused the neighbour search.)

    python benchmarks/transplant_methods.py                                   # smollm2-135m -> llama3, qwen2
    python benchmarks/transplant_methods.py --targets qwen2 --methods hybrid mean --texts wiki-en

The protocol matches the TokenAdapt baseline measured on this machine (../shared/reference/anchors.md): the first
20,000 UTF-8 bytes of each text, 512-token non-overlapping windows, no bos.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tokenadapt.bench import score_on_texts, transplant_in_subprocess
from tokenadapt.methods import get_method, method_names
from tokenadapt.options import EvalOptions
from tokenadapt.report import markdown_table
from tokenadapt.zoo.cache import cache_path

TEXTS = ["wiki-en", "pydocs-en", "debref-de", "debref-ja", "code-py"]
TWO_TOKENIZER_METHODS = [name for name in method_names() if not get_method(name).needs & {"text", "focus", "donor"}]
EVAL = EvalOptions(context=512, stride=512, bos="never", max_bytes=20000)


def run_transplant(model: str, target: str, method: str, out: Path, extra: list[str]) -> dict[str, Any]:
    return transplant_in_subprocess(model, target, method, out, extra)


def score_model(spec: str | Path, texts: list[str]) -> dict[str, dict[str, float]]:
    return score_on_texts(spec, tuple(texts), EVAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--targets", nargs="+", default=["llama3", "qwen2"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=TWO_TOKENIZER_METHODS,
        help="default: every method that needs only the model and the two tokenizers (align, focus and omp need a "
        "text or a donor: benchmarks/peers.py runs them)",
    )
    parser.add_argument("--texts", nargs="+", default=TEXTS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every transplant")
    parser.add_argument("--work", type=Path, default=cache_path("bench-work"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/transplant_methods.json"))
    parser.add_argument("--render", type=Path, help="only print the tables of an earlier run's JSON")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"model": args.model, "eval": EVAL.__dict__, "texts": args.texts, "cells": []}
    original = score_model(args.model, args.texts)
    results["original"] = original
    throughput = sum(s["tokens_per_s"] for s in original.values()) / len(original)
    print(f"original {args.model}: evaluation throughput {throughput:.0f} tokens/s", flush=True)
    for target in args.targets:
        for method in args.methods:
            out = args.work / f"{args.model}-{Path(target).name}-{method}"
            runs = {}
            if method == "hybrid":
                for cache in ("embeddings", "neighbors"):
                    shutil.rmtree(cache_path(cache), ignore_errors=True)
                runs["cold"] = run_transplant(args.model, target, method, out, args.extra)
            runs["warm"] = run_transplant(args.model, target, method, out, args.extra)
            scores = score_model(out, args.texts)
            cell = {"target": target, "method": method, **runs, "scores": scores}
            results["cells"].append(cell)
            ratios = [scores[t]["bits_per_byte"] / original[t]["bits_per_byte"] for t in args.texts]
            print(
                f"{target:8s} {method:13s} warm {runs['warm']['wall_s']:6.1f}s"
                + (f" cold {runs['cold']['wall_s']:6.1f}s" if "cold" in runs else "")
                + f" rss {runs['warm']['peak_rss_mb']:6.0f}MB avg ratio {sum(ratios) / len(ratios):.3f}",
                flush=True,
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))


def render(results: dict[str, Any]) -> str:
    texts, original = results["texts"], results["original"]
    headers = ["target", "method", *texts, "avg ratio", "warm s", "cold s", "peak RSS MB (warm / cold)"]
    rows: list[list[Any]] = [
        ["(original)", "-", *[f"{original[t]['bits_per_byte']:.3f}" for t in texts], "1.000", "-", "-", "-"]
    ]
    for cell in results["cells"]:
        ratios = [cell["scores"][t]["bits_per_byte"] / original[t]["bits_per_byte"] for t in texts]
        rows.append(
            [
                cell["target"],
                cell["method"],
                *[f"{cell['scores'][t]['bits_per_byte']:.3f} ({r:.3f}x)" for t, r in zip(texts, ratios, strict=True)],
                f"{sum(ratios) / len(ratios):.3f}x",
                cell["warm"]["wall_s"],
                cell.get("cold", {}).get("wall_s", "-"),
                " / ".join(f"{cell[run]['peak_rss_mb']:.0f}" for run in ("warm", "cold") if run in cell),
            ]
        )
    compression = [["(original)", *[f"{original[t]['tokens_per_byte']:.3f}" for t in texts]]]
    for target in dict.fromkeys(c["target"] for c in results["cells"]):
        cell = next(c for c in results["cells"] if c["target"] == target)
        compression.append([target, *[f"{cell['scores'][t]['tokens_per_byte']:.3f}" for t in texts]])
    return (
        "Bits per byte of the original, then of each transplant with its ratio to the original (lower is better):\n\n"
        + markdown_table(headers, rows)
        + "\n\nTokens per byte:\n\n"
        + markdown_table(["tokenizer", *texts], compression)
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
