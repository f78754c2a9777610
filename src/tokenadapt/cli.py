"""The `tokenadapt` command: parse, call one library function, print its result.

Flags are generated from the option dataclasses in `options.py`, so a default is written once, there.
User errors (`TokenAdaptError`) print one paragraph and exit 2; Ctrl-C exits 130; neither prints a traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenadapt.errors import OutputError, TokenAdaptError
from tokenadapt.options import (
    BenchOptions,
    EvalOptions,
    HealOptions,
    TrainTokenizerOptions,
    TransplantOptions,
    VerifyOptions,
)

DESCRIPTION = "Move a pretrained language model onto a new tokenizer, zero-shot, and measure what it costs."
DEMO_MODEL, DEMO_TOKENIZER, DEMO_TEXTS = "smollm2-135m", "llama3", ("wiki-en",)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One --flag per dataclass field, with the field's default and help (booleans get --x/--no-x)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, nargs="*", type=str, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=help_text)


def options_from(args: argparse.Namespace, cls: type) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenadapt", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # the same flags after the command name too; SUPPRESS keeps an absent one from undoing the top-level one
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log each stage")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    subparsers = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], **kwargs)

    add_command("list", help="built-in models, tokenizers, embedders, texts and methods, and what is cached")

    t = add_command("transplant", help="move a model onto a new tokenizer, zero-shot")
    t.add_argument("model", help="built-in name, model directory, .gguf file or Hub id")
    t.add_argument(
        "tokenizer",
        help="built-in name, tokenizer dir/file (tokenizer.json, .model, tiktoken, Tekken, .gguf)",
    )
    t.add_argument("out", type=Path, help="output directory (must not exist unless --overwrite)")
    add_dataclass_flags(t, TransplantOptions)

    e = add_command("eval", help="bits per byte, perplexity and compression on texts")
    e.add_argument("model", help="built-in name, model directory, .gguf file or Hub id")
    e.add_argument("--reference", help="a model to compare with (usually the original)")
    e.add_argument("--text", action="append", help="built-in text name or local path (repeatable; default wiki-en)")
    e.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    add_dataclass_flags(e, EvalOptions)

    g = add_command("diagnose", help="where a transplanted model loses against its original, token by token")
    g.add_argument("model", help="a transplanted model directory (or any model: then pass --reference)")
    g.add_argument("--reference", help="the original model (default: the one its transplant_report.json names)")
    g.add_argument("--text", action="append", help="built-in text name or local path (repeatable; default wiki-en)")
    g.add_argument("--top", type=int, default=12, help="costliest target tokens to list per text")
    g.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    add_dataclass_flags(g, EvalOptions)

    v = add_command(
        "verify", help="check a model directory (shapes, special ids, ties, finite values; reload and score if small)"
    )
    v.add_argument("directory", type=Path)
    add_dataclass_flags(v, VerifyOptions)

    r = add_command("tokenizer-report", help="compression, speed and vocabulary use of tokenizers on texts")
    r.add_argument("tokenizers", nargs="+", help="built-in names or tokenizer dirs/files")
    r.add_argument("--text", action="append", help="built-in text name or local path (repeatable; default wiki-en)")
    r.add_argument("--max-bytes", type=int, default=0, help="use only the first N bytes of each text (0 = all)")
    r.add_argument("--json", type=Path, help="also write the report as JSON to this file")

    tt = add_command("train-tokenizer", help="learn a BPE, supertoken or SuperBPE tokenizer from text")
    tt.add_argument("--text", action="append", required=True, help="built-in text name or local path (repeatable)")
    tt.add_argument("--out", type=Path, required=True, help="output tokenizer directory")
    add_dataclass_flags(tt, TrainTokenizerOptions)

    h = add_command(
        "heal", help="train a transplanted model's new embedding rows (body frozen) on text; held-out before/after"
    )
    h.add_argument("model", help="a transplanted model directory (or any model with --rows all)")
    h.add_argument("out", type=Path, help="output directory (must not exist unless --overwrite)")
    h.add_argument("--text", action="append", required=True, help="built-in text name or local path (repeatable)")
    add_dataclass_flags(h, HealOptions)

    b = add_command("bench", help="a resumable matrix of models x tokenizers x methods, scored on texts")
    add_dataclass_flags(b, BenchOptions)
    b.add_argument("--json", type=Path, help="write every cell's figures to this file")
    b.add_argument("--markdown", type=Path, help="write the tables to this Markdown file")
    b.add_argument("--plots", type=Path, help="write one PNG per model and target into this folder")

    d = add_command("demo", help=f"transplant {DEMO_MODEL} onto {DEMO_TOKENIZER} and compare before/after")
    d.add_argument("--method", default=TransplantOptions.method, help="method to demonstrate")
    return parser


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    progress = not args.quiet
    if args.command == "list":
        print(render_list())
    elif args.command == "transplant":
        from tokenadapt.transplant import transplant

        command = "tokenadapt " + shlex.join(argv)
        result = transplant(
            args.model, args.tokenizer, args.out, options_from(args, TransplantOptions), progress, command
        )
        print(result.to_markdown())
    elif args.command == "eval":
        from tokenadapt.evaluation import evaluate

        texts = args.text or ["wiki-en"]
        scores = evaluate(args.model, texts, args.reference, options_from(args, EvalOptions), progress)
        if args.json:
            save_json(args.json, scores.to_dict())
        print(scores.to_markdown())
    elif args.command == "diagnose":
        from tokenadapt.evaluation.excess import diagnose

        options = options_from(args, EvalOptions)
        found = diagnose(args.model, args.text or ["wiki-en"], args.reference, options, top=args.top)
        if args.json:
            save_json(args.json, found.to_dict())
        print(found.to_markdown())
    elif args.command == "verify":
        from tokenadapt.file_level import verify_directory
        from tokenadapt.report import markdown_table

        options = options_from(args, VerifyOptions)
        verification = verify_directory(args.directory, int(options.full_verify_max_gb * 1e9))
        rows = [[name, "ok" if ok else "FAILED"] for name, ok in verification.checks.items()]
        loss = (
            f"loss on a short text: {verification.loss:.3f}"
            if verification.loss is not None
            else f"not reloaded or scored (larger than --full-verify-max-gb {options.full_verify_max_gb})"
        )
        print(markdown_table(["check", "result"], rows) + f"\n\nchecks: {verification.kind}; {loss}")
        for problem in verification.problems:
            print(f"problem: {problem}")
        return 0 if verification.passed else 1
    elif args.command == "tokenizer-report":
        from tokenadapt.evaluation.tokenizer_report import tokenizer_report

        report = tokenizer_report(args.tokenizers, args.text or ["wiki-en"], args.max_bytes, progress)
        if args.json:
            save_json(args.json, report.to_dict())
        print(report.to_markdown())
    elif args.command == "train-tokenizer":
        from tokenadapt.training import train_tokenizer

        command = "tokenadapt " + shlex.join(argv)
        trained = train_tokenizer(args.text, args.out, options_from(args, TrainTokenizerOptions), progress, command)
        print(trained.to_markdown())
    elif args.command == "heal":
        from tokenadapt.healing import heal

        command = "tokenadapt " + shlex.join(argv)
        healed = heal(args.model, args.out, args.text, options_from(args, HealOptions), progress, command)
        print(healed.to_markdown())
    elif args.command == "bench":
        from tokenadapt.bench import run_bench

        bench = run_bench(options_from(args, BenchOptions), log=lambda line: print(line, flush=True))
        table = bench.to_markdown() + f"\n\nScoring throughput: {bench.evaluation_tokens_per_s:.0f} tokens/s."
        if args.json:
            save_json(args.json, bench.to_dict())
        if args.markdown:
            save_text(args.markdown, table + "\n")
        if args.plots:
            for path in bench.plot(args.plots):
                print(f"wrote {path}")
        print(table)
    elif args.command == "demo":
        print(run_demo(args.method, progress))
    return 0


def save_json(path: Path, data: Any) -> None:
    """Write `data` as JSON (`report.json_text`) to a path the user named (--json)."""
    from tokenadapt.report import json_text

    save_text(path, json_text(data))


def save_text(path: Path, text: str) -> None:
    """Write a file the user named (--json, --markdown); a path that cannot be written is one clear error."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise OutputError(
            f"Cannot write {path}: {error.strerror or error}.",
            "Choose a path in a directory that exists and that you can write to.",
        ) from error


def run_demo(method: str, progress: bool) -> str:
    """The README's main job on built-in defaults: transplant, then compare bits and tokens per byte."""
    from tokenadapt.evaluation import evaluate
    from tokenadapt.transplant import transplant
    from tokenadapt.zoo.cache import cache_path

    out = cache_path("demo", f"{DEMO_MODEL}-{DEMO_TOKENIZER}-{method}")
    out.parent.mkdir(parents=True, exist_ok=True)
    options = TransplantOptions(method=method, overwrite=True)
    command = f"tokenadapt transplant {DEMO_MODEL} {DEMO_TOKENIZER} {out} --method {method}"
    result = transplant(DEMO_MODEL, DEMO_TOKENIZER, out, options, progress, command)
    scores = evaluate(out, list(DEMO_TEXTS), reference=DEMO_MODEL, options=EvalOptions(bos="never"), progress=progress)
    return "\n\n".join(
        [
            result.to_markdown(),
            f"## Before ({DEMO_MODEL}) and after ({DEMO_TOKENIZER} tokenizer, {method}), zero-shot",
            scores.to_markdown().split("\n", 2)[2],
            f"The transplanted model is in {out}; load it with AutoModelForCausalLM.from_pretrained.",
        ]
    )


def render_list() -> str:
    from tokenadapt.methods import METHODS
    from tokenadapt.report import markdown_table
    from tokenadapt.zoo import cache_root, list_artifacts
    from tokenadapt.zoo.texts import list_texts

    artifacts = [[a.kind, a.name, "yes" if a.cached else "no", a.description] for a in list_artifacts()]
    texts = [["text", t.name, "yes" if t.cached else "no", t.description] for t in list_texts()]
    methods = [[name, spec.summary] for name, spec in METHODS.items()]
    return "\n\n".join(
        [
            f"Cache: {cache_root()} (set TOKENADAPT_CACHE to move it)",
            markdown_table(["kind", "name", "cached", "description"], artifacts + texts),
            markdown_table(["method", "summary"], methods),
        ]
    )


def silence_library_progress() -> None:
    """--quiet also silences the progress bars transformers and the Hub client draw while loading and saving."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB for reuse instead of handing them back to the kernel.

    The auxiliary encoder allocates and frees the same activation sizes thousands of times; by default glibc maps
    each one afresh and pays its page faults again. Keeping them makes the cold embedding about 10% faster for a
    few tens of MiB of peak memory; `transplant` and `demo` ask for it. A no-op (False) where the C library is not
    glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        # mallopt(M_MMAP_THRESHOLD = -3, 32 MiB: glibc's maximum) and (M_TRIM_THRESHOLD = -1, 1 GiB)
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))
    except (OSError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads: back its large CPU tensors with transparent huge pages. First-touch page faults take a
    # large share of a big transplant's time otherwise (a 128k x 4096 bf16 matrix is 262,144 faults of 4 KiB).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command in {"transplant", "demo"}:  # the commands that run the auxiliary encoder
        keep_freed_memory()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.quiet:
        silence_library_progress()
    try:
        return run(args, argv)
    except TokenAdaptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PermissionError as error:  # an input or a cache file this user may not read: the environment, not a bug
        print(
            f"error: Permission denied: {error.filename or error}. Make it readable for this user (or copy it "
            "somewhere you can read and pass that); nothing was written and the inputs are untouched.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: nothing was written and the inputs are untouched; run the same command again to start over.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
