"""Benchmark: how much of the zero-shot gap a short heal closes, per objective, on a 2-core CPU.

Transplants smollm2-135m onto qwen2 with hybrid (cached in the work folder), then for each objective (and its budget)
runs

    python -m tokenadapt -q heal ZERO_SHOT OUT --text wiki-en --text debref-de --text code-py \
        --objective OBJ --budget BUDGET

in a subprocess (so its peak RSS is its own), and scores the original, the zero-shot and each healed model on the
*test* split of the same texts (first 20 KB each, as `tokenadapt bench`; healing trained on the dev split, and
its early stopping watched the dev split's held-out tail). Prints the table of bits-per-byte ratios to the
original, the share of the gap each heal closed, its time and peak RSS; writes benchmarks/results/heal.json and
the curve of held-out ratio against minutes to docs/plots/heal_curve.png.

    python benchmarks/heal.py                                     # the documented run: ntp 20m, distill 10m
    python benchmarks/heal.py --objectives ntp --budgets 2m       # a quick smoke run
    python benchmarks/heal.py --render                         # tables and plot of the last run's JSON
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tokenadapt.evaluation import evaluate
from tokenadapt.options import EvalOptions
from tokenadapt.report import markdown_table
from tokenadapt.zoo.cache import cache_path

TEXTS = ["wiki-en", "debref-de", "code-py"]


def tokenadapt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenadapt", "-q", *args], check=True)


def test_ratios(model: Path | str, reference: str) -> dict[str, float]:
    """bits-per-byte ratio to `reference` on each text's test split (first 20 KB)."""
    result = evaluate(model, TEXTS, reference=reference, options=EvalOptions(max_bytes=20000))
    return {row.text: float(row.ratio("bits_per_byte") or 0.0) for row in result.rows}


def run(objectives: list[str], budgets: list[str], work: Path, extra: list[str]) -> dict[str, Any]:
    zero_shot = work / "smollm2-qwen2-hybrid"
    if not zero_shot.exists():
        # the documented heal figures start from the paper's hybrid (measured before prior calibration,
        # the neighbour-form and whitespace-tail defaults existed)
        paper = ("--prior", "off", "--whitespace-tail", "keep", "--neighbor-form", "ignore")
        tokenadapt("transplant", "smollm2-135m", "qwen2", str(zero_shot), *paper)
    results: dict[str, Any] = {"texts": TEXTS, "zero_shot": test_ratios(zero_shot, "smollm2-135m")}
    for objective, budget in zip(objectives, budgets, strict=True):
        out = work / f"healed-{objective}"
        flags = [f"--text={t}" for t in TEXTS] + ["--objective", objective, "--budget", budget, "--overwrite"]
        start = time.perf_counter()
        tokenadapt("heal", str(zero_shot), str(out), *flags, *extra)
        wall = time.perf_counter() - start
        report = json.loads((out / "heal_report.json").read_text())
        results[objective] = {
            "budget": budget,
            "test_ratios": test_ratios(out, "smollm2-135m"),
            "wall_s": round(wall, 1),
            "train_s": report["timings"]["train"],
            "peak_rss_mb": report["peak_rss_mb"],
            "steps": report["steps"],
            "best_step": report["best_step"],
            "tokens_trained": report["tokens_trained"],
            "stopped": report["stopped"],
            "curve": [{"minutes": p["minutes"], "mean_ratio": p.get("mean_ratio")} for p in report["curve"]],
            "held_out_before": report["before"].get("mean_ratio"),
            "held_out_after": report["after"].get("mean_ratio"),
            "options": report["options"],
        }
    return results


def gap_closed(before: float, after: float) -> float:
    return 1.0 - (after - 1.0) / (before - 1.0)


def render(results: dict[str, Any]) -> str:
    zero = results["zero_shot"]
    objectives = [k for k in results if isinstance(results[k], dict) and "test_ratios" in results[k]]
    headers = ["model", *results["texts"], "mean", "gap closed", "budget", "steps", "train min", "peak RSS MiB"]
    zero_mean = sum(zero.values()) / len(zero)
    rows: list[list[Any]] = [["zero-shot hybrid", *[f"{zero[t]:.3f}x" for t in results["texts"]], f"{zero_mean:.3f}x"]]
    rows[0] += ["", "", "", "", ""]
    for objective in objectives:
        cell = results[objective]
        ratios = cell["test_ratios"]
        mean = sum(ratios.values()) / len(ratios)
        rows.append(
            [
                f"healed, {objective}",
                *[f"{ratios[t]:.3f}x" for t in results["texts"]],
                f"{mean:.3f}x",
                f"{gap_closed(zero_mean, mean):.0%}",
                cell["budget"],
                cell["steps"],
                f"{cell['train_s'] / 60:.1f}",
                f"{cell['peak_rss_mb']:.0f}",
            ]
        )
    title = "smollm2-135m -> qwen2 (hybrid), then healed: bits-per-byte ratio to the original"
    return f"{title}, test split, first 20 KB of each text\n\n" + markdown_table(headers, rows)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for objective in [k for k in results if isinstance(results[k], dict) and "curve" in results[k]]:
        curve = results[objective]["curve"]
        axis.plot([p["minutes"] for p in curve], [p["mean_ratio"] for p in curve], marker="o", label=objective)
    axis.axhline(1.0, color="grey", linestyle=":", label="original model")
    starts = [
        results[k]["curve"][0]["mean_ratio"] for k in results if isinstance(results[k], dict) and "curve" in results[k]
    ]
    if starts:  # issue 7's goal: half of the zero-shot gap closed
        axis.axhline(1.0 + (starts[0] - 1.0) / 2, color="tab:red", linestyle="--", label="half the gap closed")
    axis.set_xlabel("minutes of healing (2 CPU cores)")
    axis.set_ylabel("held-out bits/byte ratio to original (mean)")
    axis.set_title("smollm2-135m -> qwen2, hybrid, then heal")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["ntp", "distill"])
    parser.add_argument("--budgets", nargs="+", default=["20m", "10m"], help="one per objective")
    parser.add_argument("--work", type=Path, default=cache_path("bench-work", "heal"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/heal.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/plots/heal_curve.png"))
    parser.add_argument("--render", action="store_true", help="only print the table (and plot) of --json")
    parser.add_argument("heal_flags", nargs="*", help="extra flags for every heal, after --")
    args = parser.parse_args()
    if args.render:
        results = json.loads(args.json.read_text())
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run(args.objectives, args.budgets, args.work, args.heal_flags)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    try:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")


if __name__ == "__main__":
    main()
