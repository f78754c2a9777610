"""Benchmark: transplant a synthetic Llama-shaped checkpoint of 8+ GB and compare with copying its files.

Writes a sharded safetensors checkpoint (random bf16 weights, Llama-3-8B's shapes: 128,256 rows, hidden 4096,
intermediate 14336, 8 KV heads; 15 layers make 8.6 GB in ~2 GB shards, generated one shard at a time) with the
built-in `llama3` tokenizer into the cache, times `cp -r` of it (and the flush of the copy to disk), then runs

    python -m tokenadapt -q transplant CHECKPOINT qwen2 OUT --method subword-mean --link-shards

in a subprocess and prints its wall time against the copy, and its peak RSS (from transplant_report.json) against
the limit 2 x (embedding + head bytes) + 1 GiB. Everything it wrote is deleted at the end except the JSON summary
(benchmarks/results/big_checkpoint.json).

    python benchmarks/big_checkpoint.py                                  # the documented run
    python benchmarks/big_checkpoint.py --layers 1 --hidden 1024 --intermediate 2048   # a quick smoke run
    python benchmarks/big_checkpoint.py --methods subword-mean hybrid
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tokenadapt.report import markdown_table
from tokenadapt.zoo.cache import cache_path

SHARD_BYTES = 2 * 1024**3
GIB = 1024**3


def tensor_shapes(
    vocab: int, hidden: int, intermediate: int, layers: int, kv_heads: int, head_dim: int
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of an untied LlamaForCausalLM, in state-dict order."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        prefix = f"model.layers.{i}"
        shapes += [
            (f"{prefix}.self_attn.q_proj.weight", (hidden, hidden)),
            (f"{prefix}.self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
            (f"{prefix}.self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
            (f"{prefix}.self_attn.o_proj.weight", (hidden, hidden)),
            (f"{prefix}.mlp.gate_proj.weight", (intermediate, hidden)),
            (f"{prefix}.mlp.up_proj.weight", (intermediate, hidden)),
            (f"{prefix}.mlp.down_proj.weight", (hidden, intermediate)),
            (f"{prefix}.input_layernorm.weight", (hidden,)),
            (f"{prefix}.post_attention_layernorm.weight", (hidden,)),
        ]
    return [*shapes, ("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def write_checkpoint(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The synthetic checkpoint: config, generation config, llama3 tokenizer files, shards and their index."""
    from transformers import GenerationConfig, LlamaConfig

    from tokenadapt.tokenizer_io import load_tokenizer

    path.mkdir(parents=True)
    tokenizer = load_tokenizer("llama3")
    tokenizer.save_pretrained(str(path))
    heads = args.hidden // 128
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=min(8, heads),
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(str(path))
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id).save_pretrained(path)
    shapes = tensor_shapes(args.vocab, args.hidden, args.intermediate, args.layers, min(8, heads), 128)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    generator = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    total = 0
    for number, members in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {
            name: torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=generator)
            for name, shape in members
        }
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
        print(f"  wrote {file} ({(path / file).stat().st_size / GIB:.2f} GiB)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    embedding_bytes = 2 * 2 * args.vocab * args.hidden  # input embeddings + untied head, bf16
    return {"total_bytes": total, "shards": len(shards), "embedding_bytes": embedding_bytes}


def child_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_copy(source: Path, target: Path) -> tuple[float, float]:
    """(seconds for `cp -r`, seconds for `cp -r` plus flushing the copy to disk)."""
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    copied = time.perf_counter() - start
    subprocess.run(["sync", *[str(p) for p in sorted(target.iterdir())]], check=True)
    return copied, time.perf_counter() - start


def run_transplant(checkpoint: Path, target: str, method: str, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "tokenadapt", "-q", "transplant", str(checkpoint), target, str(out)]
    command += ["--method", method, "--link-shards"]
    start, cpu = time.perf_counter(), child_cpu_s()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - start, child_cpu_s() - cpu
    report = json.loads((out / "transplant_report.json").read_text())
    return {
        "method": method,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": report["peak_rss_mb"],
        "timings": report["timings"],
        "io": report["model"]["io"],
        "files": report["model"].get("files"),
        "verification": report["verification"]["kind"],
        "verified": report["verification"]["passed"],
        "rows": report["model"]["rows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--target", default="qwen2", help="tokenizer to transplant onto")
    parser.add_argument("--methods", nargs="+", default=["subword-mean"])
    parser.add_argument("--work", type=Path, default=cache_path("bench-work", "big-checkpoint"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/big_checkpoint.json"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint, its copy and the outputs")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    checkpoint = args.work / "checkpoint"
    try:
        print(f"writing the synthetic checkpoint into {checkpoint}", flush=True)
        start = time.perf_counter()
        shape = write_checkpoint(checkpoint, args)
        subprocess.run(["sync", *[str(p) for p in sorted(checkpoint.iterdir())]], check=True)
        elapsed = time.perf_counter() - start
        print(f"  {shape['total_bytes'] / GIB:.2f} GiB in {shape['shards']} shards ({elapsed:.0f} s)")
        copy_s, copy_sync_s = timed_copy(checkpoint, args.work / "copy")
        shutil.rmtree(args.work / "copy")
        runs = []
        for method in args.methods:
            print(f"transplant --method {method}", flush=True)
            runs.append(run_transplant(checkpoint, args.target, method, args.work / f"out-{method}"))
            shutil.rmtree(args.work / f"out-{method}")
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)

    limit_mb = (2 * shape["embedding_bytes"] + GIB) / 2**20
    summary = {
        "checkpoint": {
            **shape,
            "layers": args.layers,
            "hidden": args.hidden,
            "intermediate": args.intermediate,
            "vocab": args.vocab,
            "dtype": "bf16",
        },
        "target": args.target,
        "copy_s": round(copy_s, 1),
        "copy_and_sync_s": round(copy_sync_s, 1),
        "rss_limit_mb": round(limit_mb),
        "runs": runs,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    rows = [
        [
            r["method"],
            r["io"],
            f"{r['wall_s']:.1f}",
            f"{r['cpu_s']:.1f}",
            f"{r['wall_s'] / copy_sync_s:.2f}x",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_rss_mb'] / limit_mb:.2f}",
            r["verification"],
        ]
        for r in runs
    ]
    print(
        f"\ncheckpoint {shape['total_bytes'] / GIB:.2f} GiB ({shape['shards']} shards, embeddings + head "
        f"{shape['embedding_bytes'] / GIB:.2f} GiB); cp -r {copy_s:.1f} s, cp -r + sync {copy_sync_s:.1f} s; "
        f"RSS limit 2 x embeddings + 1 GiB = {limit_mb:.0f} MiB; load average {os.getloadavg()[0]:.1f} on "
        f"{len(os.sched_getaffinity(0))} CPUs\n"
    )
    print(
        markdown_table(
            ["method", "path", "wall s", "CPU s", "vs copy+sync", "peak RSS MiB", "of limit", "verification"], rows
        )
    )
    for run in runs:
        print(f"{run['method']} timings: {run['timings']}; weight files: {run['files']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
