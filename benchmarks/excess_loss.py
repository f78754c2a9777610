"""Benchmark: where a transplant's excess loss comes from, token by token.

For each text, the transplanted model and the original score the same bytes. Each new-tokenizer token's excess is
its nll minus the original's nll on the same bytes (the original's tokens that end inside the new token's byte
span; the two tokenizations' boundaries mostly agree). The excess is then split by what the target is (a copied
row or an estimated one) and by what the model read last (the input), and the costliest target tokens are listed.

It also measures the **head split**. An estimated target whose first old piece is a copied token (its *head*:
" trans" for " transplant", "," for ",\\n") competes with that head. The transplant can put about the right
probability on the two together and still lose, by giving it to the head: -log p(t) against -log(p(t) + p(head)).
On SmolLM2-135M -> Qwen2 that gap is most of the estimated targets' excess (docs/design.md, "Where the remaining
loss is"). A static row cannot fix it: the right split depends on what follows the head in this context.

    python benchmarks/excess_loss.py ~/.cache/tokenadapt/bench-work/smollm2-135m-qwen2-hybrid
    python benchmarks/excess_loss.py OUT --reference smollm2-135m --texts code-py --split dev --bytes 8000
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenadapt.evaluation.evaluator import load_scored_model
from tokenadapt.evaluation.scoring import encode_with_byte_ends, sequence_losses
from tokenadapt.options import EvalOptions
from tokenadapt.report import markdown_table
from tokenadapt.vocab import Assignment, align_vocabularies, build_vocabulary
from tokenadapt.zoo.texts import load_text

TEXTS = ["wiki-en", "pydocs-en", "debref-de", "debref-ja", "code-py"]


@dataclass(frozen=True)
class Breakdown:
    """Excess nats of one text, split by target kind, input kind and the head split of estimated targets."""

    text: str
    bits_per_byte: tuple[float, float]  # original, transplant
    excess: float
    parts: dict[str, tuple[int, float]]  # name -> (positions, excess nats)
    head_split: tuple[int, float, float, float]  # estimated targets with a head: n, -log p(t), -log(p(t)+p(h)), old
    costliest: list[tuple[str, int, float]]


def heads_of(old_vocab, new_vocab, alignment) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Per new id, the new id of its head (its first old piece, where that piece is copied), else -1."""
    new_id_of_old = {int(o): int(n) for n, o in enumerate(alignment.source) if o >= 0}
    heads = np.full(new_vocab.size, -1, dtype=np.int64)
    for new_id in alignment.ids_of(Assignment.ESTIMATED):
        data = new_vocab.canonical[new_id]
        pieces = old_vocab.encode_bytes(data) if data else []
        if len(pieces) >= 2:
            heads[new_id] = new_id_of_old.get(pieces[0], -1)
    return heads


def breakdown(name: str, split: str, reference, transplant, kinds, heads, options: EvalOptions) -> Breakdown:  # type: ignore[no-untyped-def]
    """The excess of `transplant` (model, tokenizer) over `reference` on the text `name`."""
    corpus = load_text(name, split=split).truncated(options.max_bytes)
    text = corpus.text
    old_ids, old_ends = encode_with_byte_ends(reference[1], text)
    old_nll, _ = sequence_losses(reference[0], torch.tensor(old_ids), 1, options)
    new_ids, new_ends = encode_with_byte_ends(transplant[1], text)
    sequence = torch.tensor(new_ids)
    rivals = torch.from_numpy(heads[sequence.numpy()])
    new_nll, head_nll = sequence_losses(transplant[0], sequence, 1, options, alternatives=rivals)
    assert head_nll is not None
    # the original's cost of each new token's bytes: its tokens that end inside (previous end, end]
    cumulative = np.concatenate([[0.0], np.cumsum(old_nll)])
    ends_before = np.searchsorted(old_ends, new_ends, side="right")
    old_cost = cumulative[ends_before[1:]] - cumulative[ends_before[:-1]]
    excess = new_nll[1:] - old_cost
    estimated = kinds[sequence.numpy()] == int(Assignment.ESTIMATED)
    target, read = estimated[1:], estimated[:-1]
    masks = {
        "target copied": ~target,
        "target estimated": target,
        "input copied": ~read,
        "input estimated": read,
        "estimated after estimated": target & read,
    }
    with_head = target & ~np.isnan(head_nll[1:])
    target_nll, head_only = new_nll[1:][with_head], head_nll[1:][with_head]
    together = -np.logaddexp(-target_nll, -head_only)
    per_token: dict[int, list[float]] = defaultdict(lambda: [0, 0.0])
    for token_id, cost in zip(new_ids[1:], excess, strict=True):
        per_token[token_id][0] += 1
        per_token[token_id][1] += float(cost)
    costliest = sorted(per_token.items(), key=lambda item: -item[1][1])[:12]
    text_bytes = len(text.encode("utf-8"))
    return Breakdown(
        text=name,
        bits_per_byte=(float(old_nll.sum()) / np.log(2) / text_bytes, float(new_nll.sum()) / np.log(2) / text_bytes),
        excess=float(excess.sum()),
        parts={k: (int(m.sum()), float(excess[m].sum())) for k, m in masks.items()},
        head_split=(
            int(with_head.sum()),
            float(target_nll.mean()),
            float(together.mean()),
            float(old_cost[with_head].mean()),
        ),
        costliest=[(transplant[1].convert_ids_to_tokens(t), int(n), float(c)) for t, (n, c) in costliest],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a transplanted model directory")
    parser.add_argument("--reference", help="the original model (default: the one named in transplant_report.json)")
    parser.add_argument("--texts", nargs="+", default=TEXTS)
    parser.add_argument("--split", default="test")
    parser.add_argument("--bytes", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report_path = args.model / "transplant_report.json"
    reference_name = args.reference or json.loads(report_path.read_text())["model"]["name"]
    options = EvalOptions(max_bytes=args.bytes, bos="never").validated()
    torch.set_grad_enabled(False)
    reference = load_scored_model(reference_name)
    transplant = load_scored_model(args.model)
    old_vocab, new_vocab = build_vocabulary(reference[1]), build_vocabulary(transplant[1])
    rows = reference[0].get_input_embeddings().weight.shape[0]
    alignment = align_vocabularies(old_vocab, new_vocab, rows)
    heads = heads_of(old_vocab, new_vocab, alignment)
    results = [breakdown(t, args.split, reference, transplant, alignment.kinds, heads, options) for t in args.texts]

    header = [
        "text",
        "bits/B orig -> new",
        "excess nats",
        *results[0].parts,
        "head split: n",
        "-log p(t)",
        "-log(p(t)+p(head))",
        "original",
    ]
    table = []
    for r in results:
        cells = [f"{n} / {c / r.excess:.0%}" for n, c in r.parts.values()]
        n, alone, together, old = r.head_split
        table.append(
            [
                r.text,
                f"{r.bits_per_byte[0]:.3f} -> {r.bits_per_byte[1]:.3f}",
                f"{r.excess:.0f}",
                *cells,
                str(n),
                f"{alone:.2f}",
                f"{together:.2f}",
                f"{old:.2f}",
            ]
        )
    print(f"{args.model} against {reference_name}, first {args.bytes:,} bytes of each {args.split} split")
    print("part cells: positions / share of the text's excess nats\n")
    print(markdown_table(header, table))
    for r in results:
        n, alone, together, _ = r.head_split
        print(
            f"\n{r.text}: the head split costs {n * (alone - together):.0f} of {r.excess:.0f} excess nats "
            f"({n * (alone - together) / r.excess:.0%}); costliest targets (token, count, excess nats):"
        )
        print("  " + ", ".join(f"{t!r} {c} {e:.0f}" for t, c, e in r.costliest))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n")


if __name__ == "__main__":
    main()
