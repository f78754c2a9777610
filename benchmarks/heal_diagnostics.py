"""Diagnostics behind docs/design.md's "measured and not adopted for healing" (SmolLM2-135M onto Qwen2, hybrid).

    python benchmarks/heal_diagnostics.py shift        # new tokens' probability mass; a global logit shift (oracle)
    python benchmarks/heal_diagnostics.py output-fit   # new output rows refitted on cached dev hidden states
    python benchmarks/heal_diagnostics.py output-map   # one affine map of the new output rows, on the same states

Both read the zero-shot transplant that `benchmarks/heal.py` caches, score the first 20,000 bytes of each test
split in 512-token non-overlapping windows, and print bits per byte and the ratio to the original. `output-fit`
is what an untied head could get with no backward through the body: the new rows seen in the first `--dev-bytes`
of each dev split are refitted by L-BFGS with an L2 pull (`--pull`) towards their estimates. `output-map` fits
row = A @ estimate + b for every new output row instead (Adam, 1,024 positions a batch, `--iterations` passes),
the output half of `heal --fit affine --map-features estimate --untie`, and scores the test splits after each pass.
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenadapt.vocab import build_vocabulary
from tokenadapt.vocab.alignment import align_vocabularies
from tokenadapt.zoo.cache import cache_path
from tokenadapt.zoo.models import resolve_model
from tokenadapt.zoo.texts import load_text

TEXTS = ["wiki-en", "debref-de", "code-py"]
ORIGINAL_BPB = {"wiki-en": 0.940, "debref-de": 1.784, "code-py": 0.893}  # docs/results.md, same protocol


def load() -> tuple[torch.nn.Module, object, torch.Tensor, torch.Tensor]:
    """(model, tokenizer, its tied matrix [V, d], bool [V] of the rows the transplant estimated)."""
    folder = cache_path("bench-work", "heal") / "smollm2-qwen2-hybrid"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    old = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)
    alignment = align_vocabularies(build_vocabulary(old), build_vocabulary(tokenizer), len(old))
    weight = model.get_input_embeddings().weight.detach()
    new = torch.zeros(weight.shape[0], dtype=torch.bool)
    new[torch.from_numpy(alignment.estimated_ids)] = True
    return model, tokenizer, weight, new


@torch.no_grad()
def hidden_states(model: torch.nn.Module, tokenizer: object, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states [N, d] and their next-token targets [N], 512-token non-overlapping windows."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)  # type: ignore[operator]
    hidden, targets = [], []
    for start in range(0, len(ids) - 1, 512):
        window = ids[start : start + 512]
        if len(window) < 2:
            break
        hidden.append(model.model(input_ids=window[None]).last_hidden_state[0, :-1])  # type: ignore[operator]
        targets.append(window[1:])
    return torch.cat(hidden), torch.cat(targets)


def first_bytes(name: str, split: str, n: int) -> str:
    return load_text(name, split).text.encode()[:n].decode("utf-8", "ignore")


def bits_per_byte(hidden: torch.Tensor, targets: torch.Tensor, matrix: torch.Tensor, n_bytes: int) -> float:
    nll = sum(
        float(
            torch.nn.functional.cross_entropy(hidden[s : s + 2048] @ matrix.T, targets[s : s + 2048], reduction="sum")
        )
        for s in range(0, len(targets), 2048)
    )
    return nll / math.log(2) / n_bytes


@torch.no_grad()
def shift() -> None:
    model, tokenizer, weight, new = load()
    for name in TEXTS:
        text = first_bytes(name, "test", 20000)
        hidden, targets = hidden_states(model, tokenizer, text)
        logits = hidden @ weight.T
        mass = float(torch.softmax(logits, -1)[:, new].sum(-1).mean())
        print(
            f"{name}: new tokens are {float(new[targets].float().mean()):.3f} of the text, get {mass:.3f} of the mass"
        )
        for beta in (-2.0, -1.0, -0.5, 0.0):
            nll = torch.nn.functional.cross_entropy(logits + beta * new.float(), targets, reduction="sum")
            bpb = float(nll) / math.log(2) / len(text.encode())
            print(f"  shift {beta:+.1f}: {bpb:.4f} bits/byte, {bpb / ORIGINAL_BPB[name]:.3f}x")


def output_fit(dev_bytes: int, pull: float, iterations: int) -> None:
    model, tokenizer, weight, new = load()
    dev = [hidden_states(model, tokenizer, first_bytes(name, "dev", dev_bytes)) for name in TEXTS]
    hidden = torch.cat([h for h, _ in dev])
    targets = torch.cat([t for _, t in dev])
    seen = torch.unique(targets[new[targets]])
    fixed = torch.ones_like(new)
    fixed[seen] = False
    with torch.no_grad():  # the rows that do not train contribute a fixed log-sum-exp per position
        lse_fixed = torch.cat(
            [torch.logsumexp((hidden[s : s + 2048] @ weight.T)[:, fixed], -1) for s in range(0, len(hidden), 2048)]
        )
    position = torch.full((weight.shape[0],), -1, dtype=torch.long)
    position[seen] = torch.arange(len(seen))
    index = position[targets]
    target_fixed = (hidden * weight[targets]).sum(-1)
    start = weight[seen].clone()
    rows = start.clone().requires_grad_(True)

    def loss() -> torch.Tensor:
        logits = hidden @ rows.T
        lse = torch.logaddexp(lse_fixed, torch.logsumexp(logits, -1))
        target = torch.where(index >= 0, logits.gather(1, index.clamp(min=0)[:, None])[:, 0], target_fixed)
        return (lse - target).mean() + pull * ((rows - start) ** 2).sum() / len(targets)

    optimizer = torch.optim.LBFGS([rows], lr=1, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    refitted = weight.clone()
    refitted[seen] = rows.detach()
    for name in TEXTS:
        text = first_bytes(name, "test", 20000)
        test_hidden, test_targets = hidden_states(model, tokenizer, text)
        for label, matrix in (("zero-shot", weight), ("refitted", refitted)):
            bpb = bits_per_byte(test_hidden, test_targets, matrix, len(text.encode()))
            print(f"{name} {label}: {bpb:.4f} bits/byte, {bpb / ORIGINAL_BPB[name]:.3f}x")


def output_map(dev_bytes: int, passes: int, lr_map: float = 1e-3, lr_offset: float = 1e-2) -> None:
    model, tokenizer, weight, new = load()
    dev = [hidden_states(model, tokenizer, first_bytes(name, "dev", dev_bytes)) for name in TEXTS]
    hidden = torch.cat([h for h, _ in dev])
    targets = torch.cat([t for _, t in dev])
    tests = {}
    for name in TEXTS:
        text = first_bytes(name, "test", 20000)
        tests[name] = (len(text.encode()), *hidden_states(model, tokenizer, text))
    base = weight[new].clone()
    position = torch.full((weight.shape[0],), -1, dtype=torch.long)
    position[new] = torch.arange(int(new.sum()))
    index = position[targets]
    with torch.no_grad():  # the copied rows never change: their log-sum-exp and target logits are fixed
        lse_fixed = torch.cat(
            [torch.logsumexp(hidden[s : s + 2048] @ weight[~new].T, -1) for s in range(0, len(hidden), 2048)]
        )
        target_fixed = (hidden * weight[targets]).sum(-1)
    A = torch.eye(weight.shape[1], requires_grad=True)
    b = torch.zeros(weight.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [A], "lr": lr_map}, {"params": [b], "lr": lr_offset}])
    generator = torch.Generator().manual_seed(0)
    for number in range(1, passes + 1):
        order = torch.randperm(len(hidden), generator=generator)
        for start in range(0, len(hidden), 1024):
            batch = order[start : start + 1024]
            h, at = hidden[batch], index[batch]
            logits = (h @ A) @ base.T + (h @ b)[:, None]  # the new rows' logits, A @ e + b, without writing rows
            lse = torch.logaddexp(lse_fixed[batch], torch.logsumexp(logits, -1))
            target = torch.where(at >= 0, logits.gather(1, at.clamp(min=0)[:, None])[:, 0], target_fixed[batch])
            optimizer.zero_grad()
            (lse - target).mean().backward()
            optimizer.step()
        mapped = weight.clone()
        mapped[new] = (base @ A.T + b).detach()
        ratios = [bits_per_byte(h, t, mapped, n) / ORIGINAL_BPB[name] for name, (n, h, t) in tests.items()]
        print(f"pass {number}: " + ", ".join(f"{name} {r:.3f}x" for name, r in zip(TEXTS, ratios, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["shift", "output-fit", "output-map"])
    parser.add_argument("--dev-bytes", type=int, default=40000)
    parser.add_argument("--pull", type=float, default=10.0, help="L2 pull towards the estimates (0: none)")
    parser.add_argument("--iterations", type=int, default=30, help="L-BFGS iterations (output-map: passes)")
    args = parser.parse_args()
    if args.which == "shift":
        shift()
    elif args.which == "output-fit":
        output_fit(args.dev_bytes, args.pull, args.iterations)
    else:
        output_map(args.dev_bytes, args.iterations)


if __name__ == "__main__":
    main()
