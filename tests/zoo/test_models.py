"""Resolving model specs: built-in names, folders, GGUF files (converted once, atomically), Hub ids.

Unit tests convert a tiny GGUF written with the `gguf` library (a 2-layer Llama with a trained byte-level BPE),
so the real conversion path runs in seconds; the integration test converts the real SmolLM2-135M.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import gguf
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenadapt.errors import ArtifactError, InputError
from tokenadapt.tokenizer_io import load_tokenizer, resolve_tokenizer
from tokenadapt.zoo import BUILTIN_MODELS, resolve_embedder, resolve_model
from tokenadapt.zoo import models as zoo_models
from tokenadapt.zoo.cache import CACHE_ENV

CORPUS = ["The quick brown fox jumps over the lazy dog."] * 20 + ["def f(x):\n    return x + 1"] * 20


def write_tiny_gguf(path: Path, vocab_size: int = 300, hidden: int = 16, layers: int = 2) -> Path:
    """A tiny Llama GGUF with f32 tensors and a GPT-2-style tokenizer in its metadata."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer)
    state = json.loads(tok.to_str())["model"]
    vocab = sorted(state["vocab"], key=state["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    heads, kv_heads, ffn = 4, 2, 2 * hidden
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t == "<|endoftext|>" else 1 for t in vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    rng = np.random.default_rng(0)

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    add("token_embd.weight", len(vocab), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    kv = kv_heads * hidden // heads
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.attn_q.weight", hidden, hidden)
        add(f"blk.{i}.attn_k.weight", kv, hidden)
        add(f"blk.{i}.attn_v.weight", kv, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `snapshot_download`, with outgoing traffic disabled (what offline machines see)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_local_model_folder_is_used_as_is(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    resolved = resolve_model(str(tmp_path / "m"))
    assert resolved.path == tmp_path / "m"
    assert (resolved.builtin, resolved.sha256, resolved.bos_policy) == (False, None, "tokenizer")
    assert not cache_dir.joinpath("models").exists()


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        resolve_model(tmp_path)
    assert str(tmp_path) in str(error.value) and "config.json" in str(error.value)
    assert "smollm2-135m" in str(error.value)  # the fix lists what works


def test_file_that_is_not_gguf_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match=r"not a GGUF model.*Pass a Hugging Face model folder"):
        resolve_model(tmp_path / "weights.bin")


def test_missing_path_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "model.gguf"))
    with pytest.raises(InputError) as error:
        resolve_model("smollm3")
    message = str(error.value)
    assert "'smollm3' is not a built-in model" in message
    assert all(name in message for name in BUILTIN_MODELS)


def test_hub_id_offline_says_unreachable_and_lists_builtins(offline_hub: None) -> None:
    with pytest.raises(ArtifactError) as error:
        resolve_model("HuggingFaceTB/SmolLM2-135M")
    message = str(error.value)
    assert "HuggingFaceTB/SmolLM2-135M" in message and "unreachable" in message
    assert all(name in message for name in BUILTIN_MODELS)
    with pytest.raises(ArtifactError, match="minilm"):
        resolve_embedder("sentence-transformers/all-MiniLM-L6-v2")


def test_hub_download_is_used_when_reachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "config.json").write_text("{}")
    calls: list[tuple[str, list[str]]] = []

    def fake_snapshot(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    resolved = resolve_model("owner/model")
    assert resolved.path == tmp_path / "snap" and not resolved.builtin
    assert calls[0][0] == "owner/model" and "*.safetensors" in calls[0][1]


def test_embedder_specs(tmp_path: Path) -> None:
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "config.json").write_text("{}")
    assert resolve_embedder(tmp_path / "emb") == tmp_path / "emb"
    with pytest.raises(InputError, match="minilm"):
        resolve_embedder("mini-lm")
    with pytest.raises(InputError, match="is a file, not a folder"):
        resolve_embedder(tmp_path / "emb" / "config.json")


def test_gguf_file_is_converted_once_into_a_model_folder(
    tiny_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = resolve_model(tiny_gguf)
    assert resolved.path.is_relative_to(cache_dir / "models")
    assert resolved.name == "tiny-llama" and resolved.sha256 is not None and not resolved.builtin
    files = {p.name for p in resolved.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    record = json.loads((resolved.path / zoo_models.SOURCE_RECORD).read_text())
    assert record["sha256"] == resolved.sha256
    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 300

    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

    def no_second_conversion(gguf_path: Path, out: Path) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(zoo_models, "_convert_into", no_second_conversion)
    assert resolve_model(tiny_gguf).path == resolved.path


def test_gguf_tokenizer_matches_the_converted_folder(tiny_gguf: Path) -> None:
    resolved = resolve_tokenizer(tiny_gguf)
    assert resolved.format == "gguf"
    from_gguf = load_tokenizer(resolved)
    from_folder = load_tokenizer(resolve_model(tiny_gguf).path)
    text = "The lazy dog returns x + 1"
    assert from_gguf.encode(text) == from_folder.encode(text)
    assert from_gguf.decode(from_gguf.encode(text, add_special_tokens=False)) == text


def test_truncated_gguf_is_an_input_error(tiny_gguf: Path, tmp_path: Path, cache_dir: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:2000])
    with pytest.raises(InputError) as error:
        resolve_model(broken)
    assert str(broken) in str(error.value) and "complete GGUF" in str(error.value)
    assert [p.name for p in (cache_dir / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_crash_during_conversion_leaves_no_entry(
    tiny_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(gguf_path: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # not an Exception: simulates a kill mid-conversion

    monkeypatch.setattr(zoo_models, "_convert_into", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(tiny_gguf)
    assert [p.name for p in (cache_dir / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_resolves_convert_once(tiny_gguf: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conversions: list[Path] = []

    def slow_convert(gguf_path: Path, out: Path) -> None:
        conversions.append(out)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(zoo_models, "_convert_into", slow_convert)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(resolve_model(tiny_gguf).path)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(conversions) == 1 and len(set(paths)) == 1 and (paths[0] / "config.json").exists()


@pytest.mark.integration
def test_builtin_smollm2_converts_and_reloads() -> None:
    resolved = resolve_model("smollm2-135m")
    assert resolved.builtin and resolved.bos_policy == "never"
    assert resolved.sha256 == BUILTIN_MODELS["smollm2-135m"].sha256
    config = json.loads((resolved.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == 49152
    assert "quantization_config" not in config
    tokenizer = load_tokenizer(resolved.path)
    assert len(tokenizer) == 49152
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    assert time.perf_counter() - started < 30  # a safetensors reload, not a GGUF dequantization
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = tokenizer("def fibonacci(n):\n    return", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    assert resolve_model("smollm2-135m").path == resolved.path  # cached: no second conversion


@pytest.mark.integration
def test_builtin_minilm_embedder() -> None:
    from transformers import AutoModel

    folder = resolve_embedder("minilm")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        hidden = model(**tokenizer(["token", "Tokenizer"], return_tensors="pt", padding=True)).last_hidden_state
    assert hidden.shape[-1] == 384
