"""Benchmark: the default hybrid under each `--prior-fit`, scored on the dev split (how the fit was chosen).

For each fit it transplants the model in memory (no verification), scores the first `--bytes` of each text's dev
split (or `--split test`) without bos, and prints each text's bits-per-byte ratio to the original and their mean:
the figures of docs/design.md's "Prior by form" table for the shipped fit and the rank line.

    python benchmarks/prior_fit.py                                             # smollm2-135m -> qwen2
    python benchmarks/prior_fit.py --target llama3
    python benchmarks/prior_fit.py --model gemma3-270m --target llama3 --texts wiki-en debref-de debref-ja code-py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from tokenadapt.evaluation.evaluator import load_scored_model, score_corpus
from tokenadapt.options import PRIOR_FITS, EvalOptions, TransplantOptions
from tokenadapt.transplant import transplant
from tokenadapt.zoo.texts import load_text

TEXTS = ["wiki-en", "pydocs-en", "debref-de", "debref-ja", "code-py"]


def bits_per_byte(model: str | Path, texts: list[str], split: str, options: EvalOptions) -> list[float]:
    scored, tokenizer = load_scored_model(model)
    return [score_corpus(scored, tokenizer, load_text(t, split=split), options, False).bits_per_byte for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--target", default="qwen2")
    parser.add_argument("--texts", nargs="+", default=TEXTS)
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--bytes", type=int, default=8000, help="score the first N bytes of each text")
    parser.add_argument("--fits", nargs="+", default=list(PRIOR_FITS), choices=PRIOR_FITS)
    args = parser.parse_args()

    options = EvalOptions(max_bytes=args.bytes, bos="never").validated()
    reference = bits_per_byte(args.model, args.texts, args.split, options)
    print(f"| {args.model} -> {args.target}, --prior-fit | " + " | ".join(args.texts) + " | avg |")
    print("|---" * (len(args.texts) + 2) + "|")
    for fit in args.fits:
        work = Path(tempfile.mkdtemp(prefix="prior-fit-"))
        try:
            transplant_options = TransplantOptions(checkpoint_io="in-memory", verify=False, prior_fit=fit)
            transplant(args.model, args.target, work / "model", transplant_options)
            scores = bits_per_byte(work / "model", args.texts, args.split, options)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ratios = [score / base for score, base in zip(scores, reference, strict=True)]
        cells = " | ".join(f"{ratio:.4f}" for ratio in ratios)
        print(f"| {fit} | {cells} | {sum(ratios) / len(ratios):.4f} |", flush=True)


if __name__ == "__main__":
    main()
