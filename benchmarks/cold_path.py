"""Benchmark: the two speed-ups of the cold transplant path that the stage times alone do not show.

1. The neighbour search of SmolLM2 -> Qwen2 (the default's form-aware search over distinct vectors) with the int8
   candidate pass and without it: wall time, how many query rows the int8 bound proved, and whether both found
   the same neighbour ids.
2. MiniLM embedding SmolLM2's vocabulary in fresh processes with glibc's default allocator and with
   `cli.keep_freed_memory()`, alternating, `--runs` each.

    python benchmarks/cold_path.py                 # last run: 12.3 s -> 8.7 s, 99.94% proved; 12.9 s -> 11.3 s
    python benchmarks/cold_path.py --runs 1 --skip-memory
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from tokenadapt import neighbors
from tokenadapt.embedder import AuxEmbedder, embed_vocabulary
from tokenadapt.options import TransplantOptions
from tokenadapt.tokenizer_io import load_tokenizer, resolve_tokenizer
from tokenadapt.transplant import _neighbor_forms
from tokenadapt.vocab import align_vocabularies, build_vocabulary
from tokenadapt.vocab.forms import FORM_WEIGHTS
from tokenadapt.zoo import resolve_embedder, resolve_model

EMBED_ONCE = """
import sys, time
from tokenadapt.cli import keep_freed_memory
if sys.argv[1] == "kept":
    keep_freed_memory()
from tokenadapt.embedder import AuxEmbedder
from tokenadapt.tokenizer_io import load_tokenizer
from tokenadapt.vocab import build_vocabulary
from tokenadapt.zoo import resolve_embedder, resolve_model
vocab = build_vocabulary(load_tokenizer(resolve_model("smollm2-135m").path))
texts = [t for t in (vocab.embedding_text(i) for i in range(vocab.size)) if t is not None]
embedder = AuxEmbedder.load(resolve_embedder("minilm"), name="minilm")
inputs = embedder.input_keys(texts)
start = time.perf_counter()
embedder.embed_inputs(inputs)
print(time.perf_counter() - start)
"""


def search(target: str) -> None:
    old_path = resolve_model("smollm2-135m").path
    old_vocab = build_vocabulary(load_tokenizer(old_path))
    new_vocab = build_vocabulary(load_tokenizer(resolve_tokenizer(target)))
    rows = old_vocab.size
    alignment = align_vocabularies(old_vocab, new_vocab, rows)
    new_ids = alignment.estimated_ids
    embedder = AuxEmbedder.load(resolve_embedder("minilm"), name="minilm")
    old = embed_vocabulary(embedder, old_vocab)  # cached after any transplant of the pair
    new = embed_vocabulary(embedder, new_vocab, token_ids=new_ids, donor=old)
    eligible = torch.tensor([bool(data) for data in old_vocab.canonical]) & old.ok  # as transplant does
    wanted, offered = _neighbor_forms(old_vocab, new_vocab, new_ids, rows)
    bonus = TransplantOptions().neighbor_form_bonus_active
    float_rows: list[int] = []
    plain_float_top = neighbors._float_top

    def counting_float_top(queries: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        float_rows.append(queries.shape[0])
        return plain_float_top(queries, *args)  # type: ignore[arg-type]

    neighbors._float_top = counting_float_top  # type: ignore[assignment]
    found = {}
    for mode in ("off", "on"):
        neighbors.INT8_SEARCH = mode
        float_rows.clear()
        start = time.perf_counter()
        found[mode] = neighbors.top_k_neighbors(
            new.vectors,
            old.vectors,
            eligible,
            3,
            query_forms=wanted,
            key_forms=offered * FORM_WEIGHTS,
            form_bonus=bonus,
        )
        seconds = time.perf_counter() - start
        searched = sum(float_rows)
        print(f"int8 {mode:3s}: {seconds:5.1f} s, {searched:,} query rows searched in float32", flush=True)
    queries = torch.unique(torch.cat([new.vectors, wanted], dim=1), dim=0).shape[0]
    print(f"{queries:,} distinct queries; int8 proved {1 - searched / queries:.2%} of them")
    same = torch.equal(found["on"].indices, found["off"].indices)
    gap = float((found["on"].similarities - found["off"].similarities).abs().max())
    print(f"same neighbour ids: {same}; largest cosine difference {gap:.1e}")


def memory(runs: int) -> None:
    times: dict[str, list[float]] = {"default": [], "kept": []}
    for _ in range(runs):
        for mode in times:
            done = subprocess.run([sys.executable, "-c", EMBED_ONCE, mode], capture_output=True, text=True, check=True)
            times[mode].append(float(done.stdout.split()[-1]))
    for mode, seconds in times.items():
        print(f"embedding SmolLM2's vocabulary, allocator {mode}: {statistics.mean(seconds):.1f} s ({seconds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    search(args.target)
    if not args.skip_memory:
        memory(args.runs)


if __name__ == "__main__":
    main()
