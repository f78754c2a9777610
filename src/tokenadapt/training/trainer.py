"""`train_tokenizer`: learn a tokenizer from text and write it as a Hugging Face tokenizer directory.

    result = train_tokenizer(["wiki-en", "pydocs-en"], "out/super32k",
                             TrainTokenizerOptions(mode="superbpe", vocab_size=32000))
    result.held_out["bytes_per_token"]        # compression on chunks the trainer never saw
    AutoTokenizer.from_pretrained("out/super32k")

OUT holds `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and `training_report.json`. It is
written to a temporary directory beside OUT, reloaded with `AutoTokenizer` and checked to round-trip the held-out
text, and only then renamed into place.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from tokenadapt.errors import InputError
from tokenadapt.options import TrainTokenizerOptions
from tokenadapt.output import check_output_path, staged_output
from tokenadapt.report import Timings, markdown_table, peak_rss_mb, time_and_memory_line, versions, write_json
from tokenadapt.training.corpus import TrainingText
from tokenadapt.training.modes import get_mode

REPORT_NAME = "training_report.json"


@dataclass
class TrainingResult:
    """What a training run did (saved as training_report.json)."""

    out_dir: str
    mode: str
    vocab_size: int
    options: dict[str, Any]
    sources: list[dict[str, Any]]
    held_out: dict[str, Any]
    timings: dict[str, float]
    peak_rss_mb: float
    versions: dict[str, str]
    command: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        rows = [
            [s["text"], s.get("split", "all"), s["train_bytes"], s["held_out_bytes"], s["sha256"][:12]]
            for s in self.sources
        ]
        held = self.held_out
        lines = [
            f"## Tokenizer: {self.mode}, {self.vocab_size} tokens",
            "",
            f"Output: `{self.out_dir}`",
            "",
            markdown_table(["text", "split", "bytes trained on", "bytes held out", "sha256"], rows),
            "",
        ]
        if held.get("bytes"):
            lines.append(
                f"Held-out text: {held['bytes']} bytes -> {held['tokens']} tokens "
                f"({held['bytes_per_token']:.3f} bytes per token); "
                f"round trip: {'ok' if held['round_trip'] else 'FAILED'}."
            )
        lines.append(time_and_memory_line(self.timings, self.peak_rss_mb))
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def train_tokenizer(
    texts: Sequence[str | Path],
    out: str | Path,
    options: TrainTokenizerOptions | None = None,
    progress: bool = False,
    command: str | None = None,
) -> TrainingResult:
    """Train a tokenizer on `texts` (built-in names or local paths) and write it to `out`; see the module docs."""
    options = (options or TrainTokenizerOptions()).validated()
    mode = get_mode(options.mode)
    text = TrainingText(list(texts), options.split, options.held_out, options.max_bytes)
    out = check_output_path(Path(out), text.local_paths, options.overwrite)
    timings = Timings()
    with timings.stage("read"):
        sources = text.scan()
    with timings.stage("train"):
        tokenizer = mode.train(lambda: (c.text for c in text.chunks()), options, progress)
    with timings.stage("held_out"):
        held = held_out_compression(tokenizer, [c.text for c in text.chunks(held_out=True)])
    warnings = []
    if tokenizer.get_vocab_size() < options.vocab_size:
        warnings.append(
            f"The text only supports {tokenizer.get_vocab_size()} tokens at --min-frequency "
            f"{options.min_frequency}, fewer than the {options.vocab_size} asked for: train on more text."
        )
    if not held["bytes"]:
        warnings.append("No chunk was held out (the text is small), so compression on unseen text is not measured.")
    result = TrainingResult(
        out_dir=str(out),
        mode=options.mode,
        vocab_size=tokenizer.get_vocab_size(),
        options=options.to_dict(),
        sources=sources,
        held_out=held,
        timings=timings,
        peak_rss_mb=0.0,
        versions=versions(),
        command=command,
        warnings=warnings,
    )
    with staged_output(out, text.local_paths, options.overwrite) as tmp, timings.stage("save"):
        save_tokenizer_dir(tokenizer, options, tmp)
        check_reload(tmp, [c.text for c in text.chunks(held_out=True)][:3] or ["Hello, world!\n"])
        result.peak_rss_mb = round(peak_rss_mb(), 1)
        write_json(tmp / REPORT_NAME, result.to_dict())
    return result


def held_out_compression(tokenizer: Tokenizer, texts: list[str]) -> dict[str, Any]:
    """Bytes, tokens, bytes per token and encode speed on `texts`, and whether each decodes back exactly."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    start = time.perf_counter()
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    seconds = time.perf_counter() - start
    n_tokens = sum(len(e.ids) for e in encodings)
    decoded = tokenizer.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    return {
        "bytes": n_bytes,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else None,
        "encode_mb_per_s": n_bytes / 1e6 / seconds if seconds > 0 and n_bytes else None,
        "round_trip": decoded == texts,
    }


def save_tokenizer_dir(tokenizer: Tokenizer, options: TrainTokenizerOptions, directory: Path) -> None:
    """Write `tokenizer` as a directory `AutoTokenizer.from_pretrained` loads, with its special-token roles."""
    from transformers import PreTrainedTokenizerFast

    roles = {f"{role}_token": token for role, token in options.special_tokens.items()}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **roles)
    wrapped.save_pretrained(str(directory))


def check_reload(directory: Path, samples: list[str]) -> None:
    """Reload the saved directory with AutoTokenizer and check it round-trips `samples` (a bug otherwise)."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(directory))
    for sample in samples:
        ids = reloaded.encode(sample, add_special_tokens=False)
        if reloaded.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != sample:
            raise InputError(
                "The trained tokenizer does not decode its own encoding of the held-out text back exactly.",
                "This is a bug in tokenadapt: please report it with the text you trained on.",
            )
