"""The file-level path: safetensors headers and byte ranges, the plan, the written checkpoint, parity with in-memory."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from tests.conftest import tiny_llama
from tokenadapt.cli import main
from tokenadapt.errors import InputError
from tokenadapt.file_level import Unsupported, plan_checkpoint, verify_directory
from tokenadapt.methods import get_method
from tokenadapt.options import TransplantOptions
from tokenadapt.safetensors_io import (
    ByteRange,
    TensorSpec,
    link_or_copy,
    read_columns,
    read_header,
    read_tensor,
    write_safetensors,
)
from tokenadapt.transplant import column_block, transplant


def sample_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "emb": torch.randn(37, 12).to(torch.bfloat16),
        "head": torch.randn(37, 12, dtype=torch.float16),
        "norm": torch.randn(12),
        "steps": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


def test_header_and_reads_match_the_safetensors_library(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert {n: (e.dtype, e.shape) for n, e in header.tensors.items()} == {
        "emb": ("BF16", (37, 12)), "head": ("F16", (37, 12)), "norm": ("F32", (12,)), "steps": ("I64", (5,)),
        "mask": ("BOOL", (3,)), "empty": ("F32", (0, 4)),
    }  # fmt: skip
    assert torch.equal(read_tensor(header, "emb"), tensors["emb"])
    assert torch.equal(read_tensor(header, "norm"), tensors["norm"])
    # column blocks read in row chunks of a few rows equal the float32 slice
    block = read_columns(header, "head", 3, 10, chunk_bytes=50)
    assert block.dtype == torch.float32 and torch.equal(block, tensors["head"][:, 3:10].float())


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_written_files_load_with_the_library_and_copy_exact_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    if not kernel_copy:  # e.g. a filesystem without copy_file_range: the buffered fallback gives the same file

        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    tensors = sample_tensors()
    source = tmp_path / "src.safetensors"
    save_file(tensors, str(source), metadata={"format": "pt"})
    header = read_header(source)
    new_emb = torch.randn(40, 12).to(torch.bfloat16)
    specs = [
        TensorSpec("emb", "BF16", (40, 12), lambda: new_emb)
        if name == "emb"
        else TensorSpec(name, e.dtype, e.shape, ByteRange(source, header.offset(name), e.nbytes))
        for name, e in header.tensors.items()
    ]
    out = tmp_path / "out.safetensors"
    written = write_safetensors(out, specs, header.metadata)
    assert (written.data_start - 8) % 8 == 0  # header padded like the library's, data aligned
    loaded = load_file(str(out))
    assert torch.equal(loaded["emb"], new_emb)
    for name in tensors.keys() - {"emb"}:
        assert torch.equal(loaded[name], tensors[name])
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    # the same specs give the same bytes (determinism of the writer)
    again = write_safetensors(tmp_path / "again.safetensors", specs, header.metadata)
    assert again.path.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-3], "file has"),
        (lambda d: d[:5], "fewer than the 8-byte"),
        (lambda d: struct.pack("<Q", 1 << 40) + d[8:], "header claims"),
        (lambda d: d[:8] + b"[" + d[9:], "not JSON"),
        (lambda d: d.replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1), "should take"),
    ],
)
def test_broken_files_are_clear_errors(tmp_path: Path, damage: object, message: str) -> None:
    path = tmp_path / "x.safetensors"
    save_file(sample_tensors(), str(path))
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(InputError, match=message) as caught:
        read_header(path)
    assert "re-download" in str(caught.value)


def test_a_config_that_cannot_be_read_is_told_apart_from_a_corrupt_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')

    def refused(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))  # chmod cannot refuse root, who runs CI

    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_text", refused)
        with pytest.raises(InputError, match="Cannot read the model config") as caught:
            plan_checkpoint(tmp_path)
    assert "may read it" in str(caught.value) and "corrupted" not in str(caught.value)
    with pytest.raises(InputError, match="cannot be read as JSON") as caught:
        plan_checkpoint(tmp_path)
    assert "re-download" in str(caught.value)


def test_link_or_copy(tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"weights")
    assert link_or_copy(source, tmp_path / "linked.bin") == "linked"
    assert os.path.samefile(source, tmp_path / "linked.bin")
    assert link_or_copy(source, tmp_path / "copied.bin", link=False) == "copied"
    assert not os.path.samefile(source, tmp_path / "copied.bin")
    assert (tmp_path / "copied.bin").read_bytes() == b"weights"


def save_sharded(path: Path, tokenizer: PreTrainedTokenizerFast, tied: bool, dtype: torch.dtype) -> Path:
    model = tiny_llama(len(tokenizer), tied=tied).to(dtype)  # type: ignore[arg-type]
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(path), max_shard_size="40KB")
    tokenizer.save_pretrained(str(path))
    assert (path / "model.safetensors.index.json").exists()
    return path


def test_plan_names_the_tensors_that_change(
    tmp_path: Path, tied_model_dir: Path, untied_model_dir: Path, byte_level_tokenizer: PreTrainedTokenizerFast
) -> None:
    tied = plan_checkpoint(tied_model_dir)
    assert tied.changed == ("model.embed_tokens.weight",) and tied.tied and tied.dtype == "F32"
    assert tied.rows == len(byte_level_tokenizer) and tied.hidden_size == 32 and tied.index is None
    untied = plan_checkpoint(untied_model_dir)
    assert untied.changed == ("model.embed_tokens.weight", "lm_head.weight")
    sharded = plan_checkpoint(save_sharded(tmp_path / "sharded", byte_level_tokenizer, False, torch.bfloat16))
    assert len(sharded.shards) > 1 and sharded.dtype == "BF16"
    assert sharded.file_of("lm_head.weight") != sharded.file_of("model.embed_tokens.weight")


def edit_config(model_dir: Path, **changes: object) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config.update(changes)
    (model_dir / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"architectures": ["PhiForCausalLM"]}, "not in the file-level table"),
        ({"architectures": None}, "not in the file-level table"),
        ({"tie_word_embeddings": True}, "stored too"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantized"),
        ({"vocab_size": "many"}, "integer vocab_size"),
    ],
)
def test_anything_unexpected_falls_back_to_in_memory(untied_model_dir: Path, change: dict, reason: str) -> None:
    edit_config(untied_model_dir, **change)
    with pytest.raises(Unsupported, match=reason):
        plan_checkpoint(untied_model_dir)


def test_a_second_vocabulary_sized_tensor_falls_back(tmp_path: Path, tied_model_dir: Path) -> None:
    tensors = load_file(str(tied_model_dir / "model.safetensors"))
    tensors["lm_head.bias"] = torch.zeros(tensors["model.embed_tokens.weight"].shape[0])
    save_file(tensors, str(tied_model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(Unsupported, match=r"lm_head\.bias"):
        plan_checkpoint(tied_model_dir)


def test_parity_with_the_in_memory_path(
    tmp_path: Path,
    byte_level_tokenizer: PreTrainedTokenizerFast,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    """The same model through both paths: the same tensors, config and special ids (hybrid, tied and sharded)."""
    cases = [("tied-f32", True, torch.float32), ("untied-bf16", False, torch.bfloat16)]
    for name, tied, dtype in cases:
        model_dir = save_sharded(tmp_path / name, byte_level_tokenizer, tied, dtype)
        outs = {}
        for io in ("file-level", "in-memory"):
            out = outs[io] = tmp_path / f"{name}-{io}"
            result = transplant(
                model_dir, new_tokenizer_dir, out, TransplantOptions(embedder=str(tiny_embedder_dir), checkpoint_io=io)
            )
            assert result.model["io"] == io and result.verification is not None
            assert result.verification["passed"] and result.verification["kind"] == "headers+reload"
        file_level = AutoModelForCausalLM.from_pretrained(outs["file-level"], dtype="auto").state_dict()
        in_memory = AutoModelForCausalLM.from_pretrained(outs["in-memory"], dtype="auto").state_dict()
        assert file_level.keys() == in_memory.keys()
        for key, value in file_level.items():
            assert value.dtype == dtype and torch.equal(value, in_memory[key]), key
        configs = [json.loads((outs[io] / "config.json").read_text()) for io in ("file-level", "in-memory")]
        for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
            assert configs[0].get(key) == configs[1].get(key), key
        report = json.loads((outs["file-level"] / "transplant_report.json").read_text())
        assert report["model"]["io"] == "file-level" and "rewritten" in report["model"]["files"]


def test_unchanged_shards_are_linked_or_copied_and_the_index_follows(
    tmp_path: Path, byte_level_tokenizer: PreTrainedTokenizerFast, new_tokenizer_dir: Path
) -> None:
    model_dir = save_sharded(tmp_path / "m", byte_level_tokenizer, tied=False, dtype=torch.bfloat16)
    plan = plan_checkpoint(model_dir)
    changed_files = {plan.file_of(name) for name in plan.changed}
    for link in (True, False):
        out = tmp_path / f"out-{link}"
        options = TransplantOptions(method="mean", link_shards=link, full_verify_max_gb=0.0)
        result = transplant(model_dir, new_tokenizer_dir, out, options)
        assert result.verification is not None and result.verification["kind"] == "headers"
        for file in plan.shards:
            shared = os.path.samefile(model_dir / file, out / file)
            assert shared == (link and file not in changed_files), file
        index = json.loads((out / "model.safetensors.index.json").read_text())
        sizes = [e.nbytes for f in plan.shards for e in read_header(out / f).tensors.values()]
        assert index["metadata"]["total_size"] == sum(sizes)
        assert index["weight_map"] == plan.index["weight_map"]  # type: ignore[index]
        assert result.model["files"] == (
            {"rewritten": len(changed_files), "linked": len(plan.shards) - len(changed_files)}
            if link
            else {"rewritten": len(changed_files), "copied": len(plan.shards) - len(changed_files)}
        )
        assert bool([w for w in result.warnings if "hard links" in w]) == link


def test_header_verification_catches_damage(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    byte_level_tokenizer: PreTrainedTokenizerFast,
    new_tokenizer_dir: Path,
) -> None:
    model_dir = save_sharded(tmp_path / "m", byte_level_tokenizer, tied=False, dtype=torch.float32)
    out = tmp_path / "out"
    transplant(model_dir, new_tokenizer_dir, out, TransplantOptions(method="mean", link_shards=False))
    source = plan_checkpoint(model_dir)
    assert verify_directory(out, 0, source).passed
    capsys.readouterr()
    assert main(["-q", "verify", str(out), "--full-verify-max-gb", "0"]) == 0  # a big model: headers only
    stdout = capsys.readouterr().out
    assert "checks: headers; not reloaded" in stdout and "FAILED" not in stdout
    plan = plan_checkpoint(out)
    # one byte of an unchanged tensor in a copied shard
    other = next(f for f in plan.shards if not any(n in plan.shards[f].tensors for n in plan.changed))
    data = bytearray((out / other).read_bytes())
    data[-1] ^= 0x01
    (out / other).write_bytes(bytes(data))
    found = verify_directory(out, 0, source)
    assert not found.checks["unchanged_tensors_identical"]
    # a NaN in the new embeddings, and a config that lies about eos
    header = plan.shards[plan.file_of("lm_head.weight")]
    with open(header.path, "r+b") as handle:
        handle.seek(header.offset("lm_head.weight"))
        handle.write(struct.pack("<f", float("nan")))
    edit_config(out, eos_token_id=7)
    found = verify_directory(out, 0, source)
    assert not found.checks["finite_embeddings"] and not found.checks["eos_id_matches"]
    assert found.kind == "headers" and not found.passed


def test_forcing_file_level_on_an_unsupported_model_is_a_clear_error(
    tmp_path: Path, untied_model_dir: Path, new_tokenizer_dir: Path
) -> None:
    edit_config(untied_model_dir, architectures=["SomethingNew"])
    with pytest.raises(InputError, match="--checkpoint-io auto"):
        transplant(untied_model_dir, new_tokenizer_dir, tmp_path / "o", TransplantOptions(checkpoint_io="file-level"))
    result = transplant(untied_model_dir, new_tokenizer_dir, tmp_path / "o", TransplantOptions(method="mean"))
    assert result.model["io"] == "in-memory" and "not in the file-level table" in result.model["io_note"]


def test_column_blocks_cover_big_matrices_and_keep_coupled_methods_whole() -> None:
    hybrid, random = get_method("hybrid"), get_method("random")
    assert column_block(128256, 4096, hybrid) == 512
    assert column_block(49152, 576, hybrid) == 576  # small models: one block, as before
    assert column_block(128256, 4096, random) == 4096
    assert column_block(10, 3, hybrid) == 3


def test_block_estimates_equal_whole_matrix_estimates(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    untied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    """Every method but random is column-separable: blocks of 5 columns give the whole-matrix rows."""
    import tokenadapt.transplant as pipeline

    weights = []
    for single_columns in (False, True):
        if single_columns:
            monkeypatch.setattr(pipeline, "column_block", lambda rows, width, spec: 5)
        out = tmp_path / f"out-{single_columns}"
        transplant(untied_model_dir, new_tokenizer_dir, out, TransplantOptions(embedder=str(tiny_embedder_dir)))
        weights.append(load_file(str(out / "model.safetensors")))
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-6), name


def test_same_inputs_options_and_seed_give_byte_identical_shards(
    tmp_path: Path, byte_level_tokenizer: PreTrainedTokenizerFast, new_tokenizer_dir: Path
) -> None:
    model_dir = save_sharded(tmp_path / "m", byte_level_tokenizer, tied=False, dtype=torch.bfloat16)

    def digest(out: Path) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("*.safetensors")))).hexdigest()

    digests = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        options = TransplantOptions(method="random", seed=seed, link_shards=False, full_verify_max_gb=0.0)
        transplant(model_dir, new_tokenizer_dir, tmp_path / name, options)
        digests.append(digest(tmp_path / name))
    assert digests[0] == digests[1] != digests[2]
