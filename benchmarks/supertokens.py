"""Benchmark: supertoken and SuperBPE tokenizers against regex BPE at the same vocabulary size and training text.

Compression (default): every mode is trained, in its own `tokenadapt train-tokenizer` subprocess (so the peak RSS
is that run's), on the test split of the English built-in texts (wiki-en, pydocs-en, debref-en; about 11.6 MB), and
scored on their dev split, which no tokenizer saw. Printed per vocabulary size and mode: bytes per token on each
held-out text, tokens saved relative to `bpe` over all of it, encode speed relative to `bpe`, training time and
peak RSS.

Scale (`--scale`): each mode trained at a 64k vocabulary on 50 MB of text (every built-in text, all splits, then
the Python sources in this virtual environment up to the byte cap): wall time and peak RSS.

    python benchmarks/supertokens.py                        # compression table, 32k and 64k
    python benchmarks/supertokens.py --no-compression --long-inputs --scale   # long inputs; 50 MB at 64k
    python benchmarks/supertokens.py --render benchmarks/results/supertokens.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from tokenadapt.evaluation.tokenizer_report import tokenizer_report
from tokenadapt.report import markdown_table
from tokenadapt.zoo.cache import cache_path
from tokenadapt.zoo.texts import BUILTIN_TEXTS

ENGLISH = ["wiki-en", "pydocs-en", "debref-en"]
# (label, flags): the control first; every other row is compared with it.
MODES = [
    ("bpe", ["--mode", "bpe"]),
    ("supertoken", ["--mode", "supertoken"]),
    ("supertoken chars (paper)", ["--mode", "supertoken", "--spans", "chars"]),
    ("superbpe", ["--mode", "superbpe"]),
]
SCALE_BYTES = 50_000_000


def train(texts: list[str], out: Path, vocab: int, flags: list[str], extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "tokenadapt", "-q", "train-tokenizer", "--out", str(out), "--overwrite"]
    command += [a for t in texts for a in ("--text", t)] + ["--vocab-size", str(vocab), *flags, *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = json.loads((out / "training_report.json").read_text())
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "train_s": report["timings"]["train"],
        "peak_rss_mb": report["peak_rss_mb"],
        "vocab_size": report["vocab_size"],
        "train_bytes": sum(s["train_bytes"] for s in report["sources"]),
    }


def compression(vocabs: list[int], work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"train": ENGLISH, "train_split": "test", "eval_split": "dev", "cells": []}
    for vocab in vocabs:
        for label, flags in MODES:
            out = work / f"{vocab}-{label.split()[0]}{'-chars' if 'chars' in label else ''}"
            run = train(ENGLISH, out, vocab, flags, ["--split", "test", "--held-out", "0"])
            report = tokenizer_report([str(out)], [str(held_out_file(work, t)) for t in ENGLISH])
            stats = {t: s for t, s in zip(ENGLISH, report.stats, strict=True)}
            cell = {
                "vocab": vocab,
                "mode": label,
                **run,
                "tokens": sum(s.tokens for s in stats.values()),
                "bytes": sum(s.bytes for s in stats.values()),
                "encode_mb_per_s": sum(s.bytes for s in stats.values())
                / 1e6
                / sum(s.bytes / 1e6 / s.encode_mb_per_s for s in stats.values()),
                "bytes_per_token": {t: s.bytes_per_token for t, s in stats.items()},
                "round_trip": all(s.round_trip for s in stats.values()),
            }
            results["cells"].append(cell)
            print(f"{vocab} {label:26s} {cell['tokens']} tokens, train {run['train_s']:.0f}s", flush=True)
    return results


def long_inputs(work: Path, vocab: int) -> list[dict[str, Any]]:
    """Encode speed of each trained mode on long inputs that a missing pre-tokenizer could make slow."""
    import random

    from tokenizers import Tokenizer

    rng = random.Random(0)
    cases = {
        "1 MB of one character": "a" * 1_000_000,
        "1 MB of digits": "".join(rng.choice("0123456789") for _ in range(1_000_000)),
        "1 MB of spaces": " " * 1_000_000,
        "1 MB of words on one line": " ".join(rng.choice(["the", "cat", "sat", "on", "mat"]) for _ in range(250_000)),
        "8 MB of words on one line": " ".join(rng.choice(["the", "cat", "sat", "on", "mat"]) for _ in range(2_000_000)),
    }
    rows = []
    for label, _ in MODES:
        tokenizer = Tokenizer.from_file(
            str(work / f"{vocab}-{label.split()[0]}{'-chars' if 'chars' in label else ''}" / "tokenizer.json")
        )
        for case, text in cases.items():
            start = time.perf_counter()
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            seconds = time.perf_counter() - start
            assert tokenizer.decode(ids, skip_special_tokens=False) == text
            rows.append({"mode": label, "input": case, "mb_per_s": len(text) / 1e6 / seconds})
            print(f"{label:26s} {case:28s} {rows[-1]['mb_per_s']:.2f} MB/s", flush=True)
    return rows


def held_out_file(work: Path, text: str) -> Path:
    """The dev split of a built-in text as a local file (one document per form-feed-separated part)."""
    from tokenadapt.zoo.texts import load_text

    path = work / "held-out" / f"{text}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\f".join(load_text(text, "dev").documents), encoding="utf-8")
    return path


def scale(work: Path) -> dict[str, Any]:
    texts = [*BUILTIN_TEXTS, str(Path(sysconfig.get_paths()["purelib"]))]
    cells = []
    for label, flags in MODES:
        out = work / f"scale-{label.split()[0]}{'-chars' if 'chars' in label else ''}"
        run = train(texts, out, 64000, flags, ["--split", "all", "--max-bytes", str(SCALE_BYTES), "--held-out", "0"])
        cells.append({"mode": label, **run})
        print(f"scale {label:26s} {run['train_bytes'] / 1e6:.1f} MB in {run['wall_s']:.0f}s", flush=True)
    return {"vocab": 64000, "max_bytes": SCALE_BYTES, "texts": texts, "cells": cells}


def render(results: dict[str, Any]) -> str:
    parts = []
    if "compression" in results:
        comp = results["compression"]
        headers = ["vocab", "mode", *[f"{t} bytes/token" for t in comp["train"]], "tokens vs bpe", "encode MB/s"]
        headers += ["speed vs bpe", "train s", "peak RSS MB"]
        rows = []
        for cell in comp["cells"]:
            base = next(c for c in comp["cells"] if c["vocab"] == cell["vocab"] and c["mode"] == "bpe")
            rows.append(
                [
                    cell["vocab"],
                    cell["mode"],
                    *[f"{cell['bytes_per_token'][t]:.3f}" for t in comp["train"]],
                    f"{100 * (cell['tokens'] / base['tokens'] - 1):+.1f}%",
                    f"{cell['encode_mb_per_s']:.2f}",
                    f"{cell['encode_mb_per_s'] / base['encode_mb_per_s']:.2f}x",
                    cell["train_s"],
                    cell["peak_rss_mb"],
                ]
            )
        parts.append(
            f"Trained on the {comp['train_split']} split of {', '.join(comp['train'])}; scored on their "
            f"{comp['eval_split']} split (unseen):\n\n" + markdown_table(headers, rows)
        )
    if "long_inputs" in results:
        rows = [[r["mode"], r["input"], f"{r['mb_per_s']:.2f}"] for r in results["long_inputs"]]
        parts.append("Encode speed on long inputs (32k):\n\n" + markdown_table(["mode", "input", "MB/s"], rows))
    if "scale" in results:
        sc = results["scale"]
        rows = [
            [c["mode"], f"{c['train_bytes'] / 1e6:.1f}", c["wall_s"], c["train_s"], c["peak_rss_mb"]]
            for c in sc["cells"]
        ]
        parts.append(
            f"Training at {sc['vocab']} tokens on {sc['max_bytes'] / 1e6:.0f} MB:\n\n"
            + markdown_table(["mode", "MB", "wall s", "train s", "peak RSS MB"], rows)
        )
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", nargs="+", type=int, default=[32000, 64000])
    parser.add_argument("--scale", action="store_true", help="also time 64k training on 50 MB")
    parser.add_argument("--long-inputs", action="store_true", help="also time encoding pathological long inputs")
    parser.add_argument("--no-compression", action="store_true", help="skip the compression table")
    parser.add_argument("--work", type=Path, default=cache_path("bench-work", "supertokens"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/supertokens.json"))
    parser.add_argument("--render", type=Path, help="only print the tables of an earlier run's JSON")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    if not args.no_compression:
        results["compression"] = compression(args.vocabs, args.work)
    if args.long_inputs:
        results["long_inputs"] = long_inputs(args.work, min(args.vocabs))
    if args.scale:
        results["scale"] = scale(args.work)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
