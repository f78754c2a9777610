"""Run external peer tools on tokenadapt's benchmark cell and score them with tokenadapt's scorer.

The cells: smollm2-135m moved onto the qwen2 tokenizer, with qwen2.5-coder-0.5b as the donor model that already
uses it, and (`--target llama3`) onto the llama3 tokenizer, where no built-in model can be a donor, so only FOCUS
runs. The peers:

- mergekit-tokensurgeon (PyPI mergekit 0.1.5): orthogonal matching pursuit over the shared tokens, k=64 by default.
- FOCUS (PyPI deepfocus 1.0.1): fastText token vectors trained on the dev split of the texts, sparsemax over the
  shared tokens.

The peers are installed into their own virtual environment, cache_path("peers", "venv") (torch from the local CPU
wheel first, so pip never pulls a CUDA build; no system site packages), and run in subprocesses with its python:
they are never imported here. Each output (a Hugging Face folder with the qwen2 tokenizer) is scored with
`tokenadapt.bench.score_on_texts` on the same texts and protocol as `tokenadapt bench` (first 20,000 bytes of each
text's test split, 512-token windows, no bos); the figure is bits per byte over the original smollm2-135m's.

    python benchmarks/peers.py                                  # both peers, tokensurgeon with k=64
    python benchmarks/peers.py --peers focus --texts wiki-en code-py
    python benchmarks/peers.py --target llama3                  # FOCUS; tokensurgeon recorded as unable to run
    python benchmarks/peers.py --peers mergekit --mergekit-k 8 --timeout 1800
    python benchmarks/peers.py --setup-only                     # only build the peers' venv
    python benchmarks/peers.py --render benchmarks/results/peers.json

A peer that cannot be installed, fails or runs past --timeout is recorded with the reason (and, for a timeout, its
last progress line), never skipped silently. Results of earlier runs with the same texts and protocol are kept in
the JSON file, so peers can be run one at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tokenadapt.bench import score_on_texts
from tokenadapt.options import EvalOptions
from tokenadapt.report import markdown_table, versions
from tokenadapt.tokenizer_io import load_tokenizer
from tokenadapt.zoo import resolve_model
from tokenadapt.zoo.cache import cache_path

TEXTS = ["wiki-en", "pydocs-en", "debref-en", "debref-de", "debref-ja", "code-py"]
MODEL = "smollm2-135m"
DONORS = {"qwen2": "qwen2.5-coder-0.5b", "llama3": None}  # built-in models that already use each target tokenizer
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
TORCH_PIN = "torch==2.13.0"
# What each peer needs, installed with torch pinned. deepfocus declares `fasttext`, which compiles C++; it is
# installed without dependencies and gets fasttext-wheel (the same `fasttext` module, prebuilt) plus the rest.
REQUIREMENTS: dict[str, list[list[str]]] = {
    "mergekit": [["mergekit==0.1.5"]],
    "focus": [
        [
            *["fasttext-wheel==0.9.2", "entmax", "fastdist", "numba", "datasets", "requests", "numpy", "scipy"],
            *["tqdm", "print-on-steroids", "regex", "transformers>=5,<6", "safetensors"],
        ],
        ["--no-deps", "deepfocus==1.0.1"],
    ],
}
IMPORT_CHECK = {"mergekit": "import mergekit.scripts.tokensurgeon", "focus": "from deepfocus import FOCUS"}
FOCUS_DEFAULTS = {"fasttext_model_epochs": 3, "fasttext_model_dim": 100, "fasttext_model_min_count": 10}

# Runs in the peers' venv: FOCUS for every vocabulary matrix of the model, then the model folder with the target
# tokenizer (the same layout mergekit-tokensurgeon writes: the model's config with the new vocab size and the
# donor's special token ids, the target tokenizer saved by transformers).
FOCUS_RUNNER = r"""
import argparse, json
from pathlib import Path
import torch
from deepfocus import FOCUS
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

parser = argparse.ArgumentParser()
for name in ("model", "donor", "train", "out"):
    parser.add_argument(name)
parser.add_argument("--processes", type=int, default=None)
parser.add_argument("--options", default="{}")
args = parser.parse_args()
model, donor, out = Path(args.model), Path(args.donor), Path(args.out)
source_tokenizer = AutoTokenizer.from_pretrained(model)
target_tokenizer = AutoTokenizer.from_pretrained(donor)
config = json.loads((model / "config.json").read_text())
tensors = load_file(model / "model.safetensors")
names = ["model.embed_tokens.weight"]
if not config.get("tie_word_embeddings", False) and "lm_head.weight" in tensors:
    names.append("lm_head.weight")
for name in names:
    source = tensors[name]
    new = FOCUS(
        source_embeddings=source.float(),
        source_tokenizer=source_tokenizer,
        target_tokenizer=target_tokenizer,
        target_training_data_path=args.train,
        processes=args.processes,
        **json.loads(args.options),
    )
    tensors[name] = new.to(source.dtype).contiguous()
    print(f"{name}: {tuple(source.shape)} -> {tuple(new.shape)}", flush=True)
tensors = {k: v for k, v in tensors.items() if not (k == "lm_head.weight" and "lm_head.weight" not in names)}
# the donor's special-token ids; a bare tokenizer folder (no donor model) gives the tokenizer's own
donor_config = json.loads((donor / "config.json").read_text()) if (donor / "config.json").exists() else {}
config["vocab_size"] = tensors["model.embed_tokens.weight"].shape[0]
for key in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
    if key in donor_config:
        config[key] = donor_config[key]
    elif not (donor / "config.json").exists():
        config[key] = getattr(target_tokenizer, key)
out.mkdir(parents=True, exist_ok=True)
save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
(out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
target_tokenizer.save_pretrained(out)
print("done", flush=True)
"""


def peers_dir() -> Path:
    return cache_path("peers")


def venv_python() -> Path:
    return peers_dir() / "venv" / "bin" / "python"


def _run_logged(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)


def _tail(log: Path, lines: int = 15) -> str:
    text = _strip_ansi(log.read_text(errors="replace")) if log.exists() else ""
    return "\n".join(text.replace("\r", "\n").strip().splitlines()[-lines:])


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def ensure_peer_installed(peer: str, torch_wheel: Path) -> str | None:
    """Install `peer` into the peers' venv (once); None if it imports, else why it cannot run."""
    venv = peers_dir() / "venv"
    log = peers_dir() / "install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if not venv_python().exists():
        done = _run_logged([sys.executable, "-m", "venv", str(venv)], log)
        if done.returncode != 0:
            return f"creating the venv failed: {_tail(log, 5)}"
    marker = venv / "tokenadapt-peers.json"
    installed = json.loads(marker.read_text()) if marker.exists() else {}
    pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if installed.get("torch") != str(torch_wheel):
        if not torch_wheel.exists():
            return f"the local torch wheel {torch_wheel} is missing (pip would otherwise pull a CUDA build)"
        if _run_logged([*pip, str(torch_wheel)], log).returncode != 0:
            return f"installing torch from {torch_wheel} failed: {_tail(log, 5)}"
        installed["torch"] = str(torch_wheel)
        marker.write_text(json.dumps(installed, indent=2))
    constraints = peers_dir() / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    if installed.get(peer) != REQUIREMENTS[peer]:
        for step in REQUIREMENTS[peer]:
            if _run_logged([*pip, "-c", str(constraints), *step], log).returncode != 0:
                return f"pip install {' '.join(step)} failed: {_tail(log, 8)}"
        installed[peer] = REQUIREMENTS[peer]
        marker.write_text(json.dumps(installed, indent=2))
    check = f"import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__; {IMPORT_CHECK[peer]}"
    done = subprocess.run([str(venv_python()), "-c", check], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return (
            f"import check failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        )
    return None


def peer_env() -> dict[str, str]:
    """Environment of a peer run: offline, every cache under cache_path("peers"), none of our venv's paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=f"{venv_python().parent}:{env.get('PATH', '/usr/bin:/bin')}",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(peers_dir() / "hf"),
        XDG_CACHE_HOME=str(peers_dir() / "xdg"),  # deepfocus caches tokenized text and fastText models here
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_measured(command: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """Run `command` (its output to `log`); wall seconds, its own peak RSS, exit code, whether it timed out."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=peer_env(), start_new_session=True
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if timeout and time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.5)
        process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "returncode": process.returncode,
        "timed_out": timed_out,
    }


def last_progress(log: Path) -> str | None:
    """The last tqdm progress line in a log (e.g. 'Approximating tokens:  3%|...| 7/221 [02:10<1:08:00, ...]')."""
    text = _strip_ansi(log.read_text(errors="replace")).replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if re.search(r"\d+/\d+ \[[^\]]*\]", line)]
    return lines[-1] if lines else None


def parse_counts(log: Path, patterns: dict[str, str]) -> dict[str, int]:
    text = _strip_ansi(log.read_text(errors="replace"))
    counts = {}
    for key, pattern in patterns.items():
        found = re.findall(pattern, text)
        if found:
            counts[key] = int(found[-1])
    return counts


def mergekit_command(model: Path, donor: Path, out: Path, k: int) -> list[str]:
    tool = str(venv_python().parent / "mergekit-tokensurgeon")
    return [
        tool,
        str(model),
        str(donor),
        str(out),
        "-k",
        str(k),
        "--approximation-method",
        "omp",
        "--device",
        "cpu",
        "-v",
    ]


def focus_training_file(texts: list[str]) -> Path:
    """The dev splits of `texts`, concatenated into one file (named by its content, as deepfocus caches by path)."""
    from tokenadapt.zoo.texts import load_text

    text = "\n\n".join(load_text(name, split="dev").text for name in texts) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = peers_dir() / "focus" / f"train-dev-{digest}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def focus_command(model: Path, donor: Path, out: Path, train: Path, focus_options: dict[str, int]) -> list[str]:
    runner = peers_dir() / "focus" / "focus_runner.py"
    runner.parent.mkdir(parents=True, exist_ok=True)
    runner.write_text(FOCUS_RUNNER)
    processes = str(os.cpu_count() or 1)
    options = json.dumps(focus_options)
    arguments = [str(model), str(donor), str(train), str(out), "--processes", processes, "--options", options]
    return [str(venv_python()), str(runner), *arguments]


def run_peer(
    key: str, peer: str, command: list[str], out: Path, timeout: float, texts: list[str], evaluation: EvalOptions
) -> dict[str, Any]:
    """Run one peer configuration and score its output; an entry with status 'ran' or the reason it did not."""
    entry: dict[str, Any] = {"peer": peer, "command": " ".join(command)}
    log = peers_dir() / "logs" / f"{key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"{key}: running (log {log})", flush=True)
    run = run_measured(command, log, timeout)
    entry.update(run, log=str(log))
    patterns = {
        "mergekit": {"exact_match": r"Exact matches: (\d+)", "approximated": r"Tokens to approximate: (\d+)"},
        "focus": {
            "copied_overlapping": r"Copied embeddings for (\d+) overlapping",
            "random_init_new": r"Initialized (\d+) new tokens from N",
            "focus_new": r"Initialized (\d+) new tokens with FOCUS",
        },
    }[peer]
    entry["counts"] = parse_counts(log, patterns)
    if run["timed_out"]:
        entry.update(status="timed out", reason=f"killed after {timeout:.0f} s", last_progress=last_progress(log))
        return entry
    if run["returncode"] != 0:
        entry.update(status="failed", reason=f"exit code {run['returncode']}: {_tail(log)}")
        return entry
    print(f"{key}: ran in {run['wall_s']} s, peak RSS {run['peak_rss_mb']} MB; scoring", flush=True)
    try:
        entry["scores"] = score_on_texts(out, tuple(texts), evaluation)
    except Exception as error:  # the output does not load or score: a result, not a crash
        entry.update(status="failed", reason=f"scoring the output failed: {type(error).__name__}: {error}")
        return entry
    entry["status"] = "ran"
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(DONORS), default="qwen2", help="the tokenizer to move onto")
    parser.add_argument("--peers", nargs="+", choices=["mergekit", "focus"], default=["mergekit", "focus"])
    parser.add_argument("--texts", nargs="+", default=TEXTS)
    parser.add_argument("--max-bytes", type=int, default=20000, help="score the first N UTF-8 bytes of each text")
    parser.add_argument("--mergekit-k", type=int, nargs="+", default=[64], help="tokensurgeon -k (one run per value)")
    parser.add_argument("--focus-epochs", type=int, default=3, help="FOCUS fastText epochs (deepfocus default 3)")
    parser.add_argument("--focus-min-count", type=int, default=10, help="FOCUS fastText minCount (default 10)")
    parser.add_argument("--timeout", type=float, default=0, help="kill a peer run after this many seconds (0 = never)")
    parser.add_argument("--torch-wheel", type=Path, default=TORCH_WHEEL)
    parser.add_argument("--json", type=Path, help="default benchmarks/results/peers.json (peers_TARGET.json)")
    parser.add_argument("--fresh", action="store_true", help="drop earlier results in --json")
    parser.add_argument("--no-original", action="store_true", help="do not score the original (another run does)")
    parser.add_argument("--setup-only", action="store_true", help="only install the peers into their venv")
    parser.add_argument("--render", type=Path, help="only print the table of an earlier run's JSON")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    evaluation = EvalOptions(context=512, stride=512, bos="never", max_bytes=args.max_bytes)

    problems = {peer: ensure_peer_installed(peer, args.torch_wheel) for peer in args.peers}
    for peer, problem in problems.items():
        print(f"{peer}: {'installed' if problem is None else 'cannot run: ' + problem}", flush=True)
    if args.setup_only:
        return

    donor_name = DONORS[args.target]
    if args.json is None:
        suffix = "" if args.target == "qwen2" else f"_{args.target}"
        args.json = Path(f"benchmarks/results/peers{suffix}.json")
    protocol = {
        "model": MODEL,
        "donor": donor_name,
        "target": args.target,
        "eval": evaluation.__dict__,
        "texts": args.texts,
    }
    if args.fresh:
        args.json.unlink(missing_ok=True)
    model = resolve_model(MODEL).path
    work = peers_dir() / "out" / args.target
    if donor_name is not None:
        donor = resolve_model(donor_name).path
    else:  # FOCUS needs only the target tokenizer; tokensurgeon needs a model that uses it
        donor = work / "target-tokenizer"
        load_tokenizer(args.target).save_pretrained(donor)
        problems["mergekit"] = f"no built-in model uses the {args.target} tokenizer, and OMP needs one as its donor"
    runs: list[tuple[str, str, list[str], Path, dict[str, Any]]] = []
    if "mergekit" in args.peers:
        for k in args.mergekit_k:
            key = f"mergekit-tokensurgeon omp k={k}"
            out = work / f"mergekit-omp-k{k}"
            config = {"approximation_method": "omp", "k": k, "default": k == 64}
            runs.append((key, "mergekit", mergekit_command(model, donor, out, k), out, config))
    if "focus" in args.peers:
        focus_options = {
            **FOCUS_DEFAULTS,
            "fasttext_model_epochs": args.focus_epochs,
            "fasttext_model_min_count": args.focus_min_count,
        }
        key, out = "FOCUS", work / "focus"
        if focus_options != FOCUS_DEFAULTS:
            key = f"FOCUS fastText epochs={args.focus_epochs} min_count={args.focus_min_count}"
            out = work / f"focus-e{args.focus_epochs}-m{args.focus_min_count}"
        train = focus_training_file(args.texts)
        config = {
            **focus_options,
            "default": focus_options == FOCUS_DEFAULTS,
            "train": f"dev split of {', '.join(args.texts)}",
            "train_bytes": train.stat().st_size,
        }
        runs.append((key, "focus", focus_command(model, donor, out, train, focus_options), out, config))

    entries: dict[str, dict[str, Any]] = {}
    for key, peer, command, out, config in runs:
        if problems[peer] is not None:
            entry = {"peer": peer, "command": " ".join(command), "status": "could not run", "reason": problems[peer]}
        else:
            entry = run_peer(key, peer, command, out, args.timeout, args.texts, evaluation)
        entries[key] = {**entry, "config": config}
        print(f"{key}: {entry['status']} {entry.get('reason', '')}", flush=True)
        save(args.json, protocol, entries)
    results = save(args.json, protocol, entries)
    if (
        "original" not in results and not args.no_original
    ):  # scored last, so a parallel invocation that already scored it is reused
        print(f"scoring the original {MODEL}", flush=True)
        results = save(args.json, protocol, entries, score_on_texts(MODEL, tuple(args.texts), evaluation))
    print(render(results))


def save(
    path: Path, protocol: dict[str, Any], entries: dict[str, Any], original: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Merge this invocation's entries (and the original's scores) into the JSON file, re-read just before writing
    so that invocations running one peer each do not drop each other's results; ratios where the original is known."""
    results: dict[str, Any] = {**protocol, "peers": {}}
    if path.exists():
        earlier = json.loads(path.read_text())
        if all(earlier.get(k) == v for k, v in protocol.items()):
            results = earlier
    results["versions"] = versions()
    if original is not None:
        results["original"] = original
    results["peers"].update(entries)
    for entry in results["peers"].values():
        if "scores" in entry and "original" in results:
            scores, base = entry["scores"], results["original"]
            entry["ratios"] = {t: scores[t]["bits_per_byte"] / base[t]["bits_per_byte"] for t in results["texts"]}
            entry["avg_ratio"] = sum(entry["ratios"].values()) / len(entry["ratios"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    return results


def render(results: dict[str, Any]) -> str:
    """Markdown: the original's bits per byte, then each peer's ratio to it per text, time and memory."""
    texts, original = results["texts"], results.get("original")
    headers = ["peer", *texts, "avg", "wall s", "CPU s", "peak RSS MB", "status"]
    bits = [f"{original[t]['bits_per_byte']:.3f}" if original else "not scored yet" for t in texts]
    rows: list[list[Any]] = [["(original bits/byte)", *bits, "", "", "", "", ""]]
    for key, entry in results["peers"].items():
        if "ratios" in entry:
            cells = [f"{entry['ratios'][t]:.3f}x" for t in texts] + [f"{entry['avg_ratio']:.3f}x"]
        else:
            cells = ["-"] * (len(texts) + 1)
        status = entry["status"] if entry["status"] == "ran" else f"{entry['status']}: {entry.get('reason', '')}"
        if entry.get("last_progress"):
            status += f" (last progress: {entry['last_progress']})"
        wall, cpu = (f"{entry[k]:.0f}" if k in entry else "-" for k in ("wall_s", "cpu_s"))
        rows.append([key, *cells, wall, cpu, entry.get("peak_rss_mb", "-"), status.replace("\n", " ")])
    return (
        f"{results['model']} -> {results['target']} (donor {results['donor']}), bits per byte over the original's "
        f"(lower is better):\n\n" + markdown_table(headers, rows)
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
