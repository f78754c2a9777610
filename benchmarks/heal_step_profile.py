"""Benchmark: where one healing step's time goes, for a transplanted model (docs/design.md quotes it).

Times, for one sequence of random token ids, the body's forward, the output head and loss, the backward pass
(with only the embedding matrix trainable, as `tokenadapt heal` does) and one Adam step; then the backward
through the body alone. Each figure is the last of three repetitions.

    tokenadapt transplant smollm2-135m qwen2 /tmp/smollm2-qwen2
    python benchmarks/heal_step_profile.py /tmp/smollm2-qwen2 --tokens 512
"""

from __future__ import annotations

import argparse
import time

import torch

from tokenadapt.checkpoint import load_causal_lm
from tokenadapt.zoo import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a transplanted model directory (or any model)")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    model = load_causal_lm(resolve_model(args.model).path).float()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    ids = torch.randint(0, weight.shape[0], (1, args.tokens), generator=torch.Generator().manual_seed(0))
    figures: dict[str, float] = {}
    for _ in range(3):
        marks = [time.perf_counter()]
        hidden = model.model(input_ids=ids).last_hidden_state
        marks.append(time.perf_counter())
        logits = model.lm_head(hidden)[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        names = ("body forward", "head and loss", "backward", "Adam step")
        figures = {name: marks[i + 1] - marks[i] for i, name in enumerate(names)}
    hidden = model.model(input_ids=ids).last_hidden_state
    start = time.perf_counter()
    hidden.sum().backward()
    figures["backward through the body alone"] = time.perf_counter() - start
    rows, width = weight.shape
    print(f"{args.tokens} tokens, {rows} x {width} embedding rows, {torch.get_num_threads()} threads")
    for name, seconds in figures.items():
        print(f"  {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
