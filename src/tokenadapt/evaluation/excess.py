"""`tokenadapt diagnose`: where a transplanted model loses against its original, token by token.

Both models score the same bytes. A new token's **excess** is its nll minus the original's nll on the same bytes:
the original's tokens that end inside the new token's byte span (the two tokenizations' boundaries mostly agree;
where they do not, the cost moves to the next token, and the text's total stays exact). The excess is split by
what the target is (a copied row or an estimated one) and by what the model read last, and the costliest targets
are listed.

An estimated target whose first old piece is a copied token has a **head** (" trans" for " transplant", "," for
",\\n"). The **head split** is -log p(target) + log(p(target) + p(head)): the probability the head took from the
target where the two together may have had about what the original gave those bytes. On SmolLM2-135M -> Qwen2 it
is 28% of the excess on English wiki and 54-82% on the other texts (docs/design.md, "Where the remaining loss is").

>>> result = diagnose("out/smol-qwen2", ["code-py"])   # the original is read from transplant_report.json
>>> result.texts[0].parts["target estimated"]["excess_share"]
0.61
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenadapt.errors import InputError
from tokenadapt.evaluation.evaluator import load_scored_model
from tokenadapt.evaluation.scoring import token_losses
from tokenadapt.options import EvalOptions
from tokenadapt.report import Timings, markdown_table, peak_rss_mb, versions
from tokenadapt.vocab import Alignment, Assignment, Vocabulary, align_vocabularies, build_vocabulary
from tokenadapt.zoo.texts import TextCorpus, load_text

REPORT_NAME = "transplant_report.json"


@dataclass(frozen=True)
class TokenCost:
    """A target token, how often it was scored, and its summed excess in nats."""

    token: str
    count: int
    excess: float


@dataclass
class TextExcess:
    """The excess of one text: totals in nats, the parts it splits into, the head split and the costliest targets.

    `parts[name]` holds "positions" and "excess" (nats) and "excess_share" (of the text's excess); `head_split`
    holds the estimated targets with a head ("positions"), their mean nll alone ("target_nll"), together with the
    head ("with_head_nll"), the original's mean nll on those bytes ("original_nll") and the summed split ("excess").
    """

    text: str
    bytes: int
    original_nll: float
    model_nll: float
    excess: float
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    head_split: dict[str, float] = field(default_factory=dict)
    costliest: list[TokenCost] = field(default_factory=list)

    @property
    def bits_per_byte(self) -> tuple[float, float]:
        """(original, model) bits per byte over the scored bytes."""
        scale = np.log(2) * self.bytes
        return self.original_nll / scale, self.model_nll / scale


@dataclass
class DiagnoseResult:
    model: str
    reference: str
    options: dict[str, Any]
    texts: list[TextExcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for row, source in zip(data["texts"], self.texts, strict=True):
            row["bits_per_byte"] = source.bits_per_byte
        return data

    def to_markdown(self) -> str:
        headers = [
            "text",
            "bits/byte original -> model",
            "excess nats",
            "target estimated",
            "input estimated",
            "head split",
            "-log p(t) / with head / original",
        ]
        rows = []
        for t in self.texts:
            before, after = t.bits_per_byte
            split = t.head_split
            rows.append(
                [
                    t.text,
                    f"{before:.3f} -> {after:.3f}",
                    f"{t.excess:,.0f}",
                    _part_cell(t.parts["target estimated"]),
                    _part_cell(t.parts["input estimated"]),
                    f"{split['excess']:,.0f} ({split['excess'] / t.excess:.0%})" if t.excess > 0 else "-",
                    f"{split['target_nll']:.2f} / {split['with_head_nll']:.2f} / {split['original_nll']:.2f}"
                    if split["positions"]
                    else "-",
                ]
            )
        lines = [
            f"## {self.model} against {self.reference}",
            "",
            "Cells: positions, share of the text's excess nats. The head split is the probability a copied first",
            "piece took from an estimated target (see `tokenadapt.evaluation.excess`).",
            "",
            markdown_table(headers, rows),
        ]
        for t in self.texts:
            costly = ", ".join(f"{c.token!r} {c.count}x {c.excess:,.0f}" for c in t.costliest)
            lines += ["", f"Costliest targets in {t.text} (token, count, excess nats): {costly}"]
        return "\n".join(lines)


def _part_cell(part: dict[str, float]) -> str:
    return f"{int(part['positions']):,}, {part['excess_share']:.0%}"


def heads_of(old_vocab: Vocabulary, new_vocab: Vocabulary, alignment: Alignment) -> np.ndarray:
    """Per new id [V_new], the new id of its head (its first old piece, where that piece is copied), else -1.

    >>> heads_of(old, new, alignment)[new.id_by_string["Ġtransplant"]] == new.id_by_string["Ġtrans"]
    True
    """
    new_id_of_old = np.full(max(int(alignment.source.max()) + 1, 1), -1, dtype=np.int64)
    copied = np.flatnonzero(alignment.source >= 0)
    new_id_of_old[alignment.source[copied]] = copied
    heads = np.full(new_vocab.size, -1, dtype=np.int64)
    for new_id in alignment.ids_of(Assignment.ESTIMATED).tolist():
        data = new_vocab.canonical[new_id]
        pieces = old_vocab.encode_bytes(data) if data else []
        if len(pieces) >= 2 and pieces[0] < new_id_of_old.shape[0]:
            heads[new_id] = new_id_of_old[pieces[0]]
    return heads


def text_excess(
    model: tuple[Any, Any],
    reference: tuple[Any, Any],
    corpus: TextCorpus,
    alignment: Alignment,
    heads: np.ndarray,
    options: EvalOptions,
    top: int = 12,
    vocab: Vocabulary | None = None,
) -> TextExcess:
    """The excess of `model` (lm, tokenizer) over `reference` (lm, tokenizer) on one text; see the module doc.

    `vocab` (the model's) names the costliest tokens by the text they stand for (" für", not "ĠfÃ¼r").
    """
    text = corpus.text
    old = token_losses(*reference, text, options)
    new = token_losses(*model, text, options, rivals=heads)
    old_ids, old_ends, old_nll = old.ids, old.byte_ends, old.nll
    new_ids, new_ends, new_nll, head_nll = new.ids, new.byte_ends, new.nll, new.rival_nll
    assert head_nll is not None
    scored = slice(0 if new.bos else 1, None)
    # the original's cost of each new token's bytes: its tokens that end inside (previous end, end]
    cumulative = np.concatenate([[0.0], np.cumsum(old_nll)])
    ends_before = np.concatenate([[0], np.searchsorted(old_ends, new_ends, side="right")])
    ends_before[-1] = len(old_ids)  # a last original token running past the model's last end still counts
    old_cost = np.diff(cumulative[ends_before])
    excess = (new_nll - old_cost)[scored]
    estimated = alignment.kinds[np.asarray(new_ids)] == int(Assignment.ESTIMATED)
    read = np.concatenate([[False], estimated[:-1]])
    masks = {
        "target copied": ~estimated,
        "target estimated": estimated,
        "input copied": ~read,
        "input estimated": read,
    }
    total = float(excess.sum())
    parts = {
        name: {
            "positions": float(mask[scored].sum()),
            "excess": float(excess[mask[scored]].sum()),
            "excess_share": float(excess[mask[scored]].sum()) / total if total else 0.0,
        }
        for name, mask in masks.items()
    }
    with_head = (estimated & ~np.isnan(head_nll))[scored]
    alone, rival = new_nll[scored][with_head], head_nll[scored][with_head]
    together = -np.logaddexp(-alone, -rival)
    head_split = {
        "positions": float(with_head.sum()),
        "target_nll": float(alone.mean()) if alone.size else 0.0,
        "with_head_nll": float(together.mean()) if alone.size else 0.0,
        "original_nll": float(old_cost[scored][with_head].mean()) if alone.size else 0.0,
        "excess": float((alone - together).sum()),
    }
    per_token: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for token_id, cost in zip(np.asarray(new_ids)[scored].tolist(), excess.tolist(), strict=True):
        per_token[token_id][0] += 1
        per_token[token_id][1] += cost
    costliest = sorted(per_token.items(), key=lambda item: -item[1][1])[:top]
    return TextExcess(
        text=corpus.name,
        bytes=int(new_ends[-1] - (0 if scored.start == 0 else new_ends[0])),
        original_nll=float(old_cost[scored].sum()),
        model_nll=float(new_nll[scored].sum()),
        excess=total,
        parts=parts,
        head_split=head_split,
        costliest=[TokenCost(_token_text(model[1], vocab, t), int(n), float(c)) for t, (n, c) in costliest],
    )


def _token_text(tokenizer: Any, vocab: Vocabulary | None, token_id: int) -> str:
    """What a token stands for: its bytes as text (partial UTF-8 escaped), else the tokenizer's own spelling."""
    data = vocab.canonical[token_id] if vocab is not None and token_id < vocab.size else None
    return data.decode("utf-8", errors="backslashreplace") if data else str(tokenizer.convert_ids_to_tokens(token_id))


def original_of(model_dir: str | Path) -> str:
    """The model a transplant started from, as its report names it (a built-in name or the path it read)."""
    report = Path(model_dir) / REPORT_NAME
    try:
        info = json.loads(report.read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{model_dir} has no readable {REPORT_NAME} to say which model it was transplanted from ({error}).",
            "Pass the original with --reference (a built-in name, a model folder, a .gguf or a Hub id).",
        ) from error
    return str(info["name"] if info.get("builtin") else info["path"])


def diagnose(
    model: str | Path,
    texts: list[str],
    reference: str | Path | None = None,
    options: EvalOptions | None = None,
    top: int = 12,
) -> DiagnoseResult:
    """Where `model` loses against `reference` (default: the original its transplant report names) on `texts`."""
    options = (options or EvalOptions()).validated()
    if top < 0:
        raise InputError(f"--top must be 0 or more, not {top}.", "Pass how many costly tokens to list per text.")
    reference = str(reference) if reference is not None else original_of(model)
    timings = Timings()
    with timings.stage("texts"):
        corpora = [load_text(t).truncated(options.max_bytes) if options.max_bytes else load_text(t) for t in texts]
    with timings.stage("load"):
        transplanted, original = load_scored_model(model), load_scored_model(reference)
    with timings.stage("align"):
        old_vocab, new_vocab = build_vocabulary(original[1]), build_vocabulary(transplanted[1])
        rows = original[0].get_input_embeddings().weight.shape[0]
        alignment = align_vocabularies(old_vocab, new_vocab, rows)
        heads = heads_of(old_vocab, new_vocab, alignment)
    result = DiagnoseResult(model=str(model), reference=reference, options=dataclasses.asdict(options))
    with timings.stage("score"):
        for corpus in corpora:
            result.texts.append(text_excess(transplanted, original, corpus, alignment, heads, options, top, new_vocab))
    result.timings = timings
    result.peak_rss_mb = round(peak_rss_mb(), 1)
    result.versions = versions()
    return result
