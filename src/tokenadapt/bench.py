"""`tokenadapt bench`: a resumable matrix of models x target tokenizers x methods, scored on texts.

Each cell transplants a model onto a target tokenizer with one method in a fresh subprocess (so its wall time and
peak RSS are its own), scores the result on every text with the one scoring implementation
(`tokenadapt.evaluation`), and stores the figures as a JSON file keyed by everything that decides them. A
finished cell is skipped on the next run, so an interrupted bench resumes where it stopped and a larger matrix
reuses a smaller one's cells. The transplanted model is deleted once scored.

    result = run_bench(BenchOptions(targets=("llama3",), methods=("hybrid", "mean"), texts=("wiki-en",)))
    print(result.to_markdown())        # per model and target: ratio to the original per text, time, memory
    result.plot(Path("docs/plots"))    # one PNG per model and target (needs matplotlib)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenadapt.errors import InputError
from tokenadapt.options import BenchOptions, EvalOptions
from tokenadapt.report import markdown_table, write_json

CELL_FORMAT = 1


@dataclass
class BenchResult:
    """Every cell's figures plus the original models' scores."""

    options: dict[str, Any]
    original: dict[str, dict[str, dict[str, Any]]]  # model -> text -> score
    cells: list[dict[str, Any]] = field(default_factory=list)
    evaluation_tokens_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def ratios(self, cell: dict[str, Any]) -> dict[str, float]:
        """Bits-per-byte ratio to the original model per text."""
        original = self.original[cell["model"]]
        return {t: s["bits_per_byte"] / original[t]["bits_per_byte"] for t, s in cell["scores"].items()}

    def healed_ratios(self, cell: dict[str, Any]) -> dict[str, float] | None:
        """Bits-per-byte ratio to the original per text after healing (None for cells that were not healed)."""
        if "healed_scores" not in cell:
            return None
        return self.ratios({"model": cell["model"], "scores": cell["healed_scores"]})

    def to_markdown(self) -> str:
        parts = []
        for model, target in dict.fromkeys((c["model"], c["target"]) for c in self.cells):
            cells = [c for c in self.cells if (c["model"], c["target"]) == (model, target)]
            texts = list(cells[0]["scores"])
            original = self.original[model]
            rows: list[list[Any]] = [
                ["(original bits/byte)", *[f"{original[t]['bits_per_byte']:.3f}" for t in texts], "", "", ""]
            ]
            for cell in sorted(cells, key=lambda c: _mean(self.ratios(c).values())):
                ratios = self.ratios(cell)
                rows.append(
                    [
                        cell["method"],
                        *[f"{ratios[t]:.3f}x" for t in texts],
                        f"{_mean(ratios.values()):.3f}x",
                        cell["transplant"]["wall_s"],
                        cell["transplant"]["peak_rss_mb"],
                    ]
                )
                healed = self.healed_ratios(cell)
                if healed is not None:
                    heal = cell["heal"]
                    rows.append(
                        [
                            f"{cell['method']}, healed {heal['train_s'] / 60:.0f} min ({heal['objective']})",
                            *[f"{healed[t]:.3f}x" for t in texts],
                            f"{_mean(healed.values()):.3f}x",
                            "",
                            cell["heal"]["peak_rss_mb"],
                        ]
                    )
            compression = [
                "tokens/byte (original -> new)",
                *[
                    f"{original[t]['tokens_per_byte']:.3f} -> {cells[0]['scores'][t]['tokens_per_byte']:.3f}"
                    for t in texts
                ],
                "",
                "",
                "",
            ]
            rows.append(compression)
            headers = ["method", *texts, "avg", "transplant s", "peak RSS MB"]
            parts.append(f"### {model} -> {target}\n\n" + markdown_table(headers, rows))
        return "\n\n".join(parts)

    def plot(self, directory: Path) -> list[Path]:
        """One grouped bar chart per model and target: bits-per-byte ratio by method and text."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise InputError(
                "Plots need matplotlib, which is not installed.",
                "pip install 'tokenadapt[bench]', or leave out --plots.",
            ) from error
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for model, target in dict.fromkeys((c["model"], c["target"]) for c in self.cells):
            cells = [c for c in self.cells if (c["model"], c["target"]) == (model, target)]
            cells.sort(key=lambda c: _mean(self.ratios(c).values()))
            texts = list(cells[0]["scores"])
            figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(cells), 3.6))
            width = 0.8 / len(texts)
            for k, text in enumerate(texts):
                xs = [i + (k - (len(texts) - 1) / 2) * width for i in range(len(cells))]
                axes.bar(xs, [self.ratios(c)[text] for c in cells], width, label=text)
            axes.axhline(1.0, color="black", linewidth=0.8)
            axes.set_xticks(range(len(cells)), [c["method"] for c in cells], rotation=20)
            axes.set_ylabel("bits per byte / original")
            axes.set_title(f"{model} -> {Path(target).name}, zero-shot")
            axes.legend(fontsize=7, ncols=min(len(texts), 3))
            figure.tight_layout()
            path = directory / f"{model}-{Path(target).name}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            written.append(path)
        return written


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


def cell_key(model: str, target: str, method: str, options: BenchOptions, bos: str = "never") -> str:
    """What decides a cell's figures, hashed (tokenadapt's version included: new code, new cells)."""
    from tokenadapt import __version__

    identity = [CELL_FORMAT, __version__, model, target, method, list(options.texts), options.max_bytes]
    identity += [options.context, options.transplant_flags]
    if options.heal:
        identity += [options.heal, options.heal_flags]
    if bos != "never":
        identity.append(f"bos={bos}")
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def transplant_in_subprocess(model: str, target: str, method: str, out: Path, flags: list[str]) -> dict[str, Any]:
    """Run `tokenadapt transplant` in a fresh process; wall time, its own peak RSS and the counts."""
    command = [sys.executable, "-m", "tokenadapt", "-q", "transplant", model, target, str(out), "--method", method]
    start = time.perf_counter()
    done = subprocess.run([*command, "--overwrite", *flags], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InputError(f"transplant {model} -> {target} ({method}) failed: {done.stderr.strip()}", "See the error.")
    report = json.loads((out / "transplant_report.json").read_text())
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": report["peak_rss_mb"],
        "counts": report["counts"],
    }


def heal_in_subprocess(model: Path, texts: tuple[str, ...], out: Path, budget: str, flags: list[str]) -> dict[str, Any]:
    """Run `tokenadapt heal` on `texts` (their dev split) in a fresh process; its report's cost figures."""
    command = [sys.executable, "-m", "tokenadapt", "-q", "heal", str(model), str(out), "--budget", budget]
    command += [f"--text={t}" for t in texts]
    done = subprocess.run([*command, "--overwrite", *flags], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InputError(f"heal of {model} failed: {done.stderr.strip()}", "See the error.")
    report = json.loads((out / "heal_report.json").read_text())
    keys = ("objective", "steps", "best_step", "tokens_trained", "stopped", "peak_rss_mb")
    return {**{k: report[k] for k in keys}, "train_s": report["timings"]["train"]}


def score_on_texts(model: str | Path, texts: tuple[str, ...], options: EvalOptions) -> dict[str, dict[str, Any]]:
    """Scores of a model on each text, with the scoring throughput."""
    from tokenadapt.evaluation.evaluator import load_scored_model, score_corpus
    from tokenadapt.zoo.texts import load_text

    lm, tokenizer = load_scored_model(model)
    scores = {}
    for name in texts:
        start = time.perf_counter()
        score = score_corpus(lm, tokenizer, load_text(name), options, progress=False)
        scores[name] = {**score.to_dict(), "tokens_per_s": score.scored_tokens / (time.perf_counter() - start)}
    return scores


def base_bos(model: str | Path) -> str:
    """The bos policy for a base model and every transplant of it: 'always' when the model's own tokenizer adds a
    bos (Gemma is trained with one), else 'never' (SmolLM2, Qwen). A transplant then gets the new tokenizer's bos,
    whose row the transplant mapped by role from the old one, or none if the new tokenizer has no bos."""
    from tokenadapt.evaluation.scoring import wants_bos
    from tokenadapt.tokenizer_io import load_tokenizer
    from tokenadapt.zoo import resolve_model

    return "always" if wants_bos(load_tokenizer(resolve_model(model).path), "auto") else "never"


def run_bench(options: BenchOptions, log: Callable[[str], None] = lambda _: None) -> BenchResult:
    """Run (or resume) the matrix; `log` receives one line per finished cell."""
    from tokenadapt.methods import method_names
    from tokenadapt.zoo.cache import cache_path

    options = options.validated()
    methods = options.methods or tuple(method_names())
    work = Path(options.work) if options.work else cache_path("bench")
    (work / "cells").mkdir(parents=True, exist_ok=True)
    result = BenchResult(options=options.to_dict(), original={})
    speeds = []
    for model in options.models:
        bos = base_bos(model)
        evaluation = EvalOptions(context=options.context, stride=options.context, bos=bos, max_bytes=options.max_bytes)
        key = hashlib.sha256(json.dumps([model, list(options.texts), evaluation.__dict__]).encode()).hexdigest()[:16]
        cached = work / "original" / f"{key}.json"
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_json(cached, score_on_texts(model, options.texts, evaluation))
        result.original[model] = json.loads(cached.read_text())
        speeds += [s["tokens_per_s"] for s in result.original[model].values()]
        for target in options.targets:
            for method in methods:
                path = work / "cells" / f"{cell_key(model, target, method, options, bos)}.json"
                if path.exists():
                    result.cells.append(json.loads(path.read_text()))
                    continue
                out = work / "models" / f"{Path(model).name}-{Path(target).name}-{method}"
                out.parent.mkdir(parents=True, exist_ok=True)
                run = transplant_in_subprocess(model, target, method, out, shlex.split(options.transplant_flags))
                cell = {"model": model, "target": target, "method": method, "transplant": run}
                cell["scores"] = score_on_texts(out, options.texts, evaluation)
                if options.heal:
                    healed = out.with_name(out.name + "-healed")
                    flags = shlex.split(options.heal_flags)
                    cell["heal"] = heal_in_subprocess(out, options.texts, healed, options.heal, flags)
                    cell["healed_scores"] = score_on_texts(healed, options.texts, evaluation)
                    shutil.rmtree(healed, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                write_json(path, cell)
                result.cells.append(cell)
                average = _mean(result.ratios(cell).values())
                log(f"{model} -> {target} {method}: avg ratio {average:.3f}x, {run['wall_s']} s")
    result.evaluation_tokens_per_s = round(_mean(speeds), 1)
    return result


__all__ = ["BenchResult", "cell_key", "heal_in_subprocess", "run_bench"]
