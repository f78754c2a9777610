"""The file-level transplant: rewrite only the embedding tensors of a safetensors checkpoint, never load the model.

A transplant changes two tensors at most (the input embeddings and an untied output head); every other tensor is
carried over byte for byte. For a safetensors checkpoint of a known architecture this module

1. plans from config.json and the shard headers alone which tensors change (`plan_checkpoint`), falling back to the
   in-memory path (`Unsupported`, with the reason) for anything it does not recognise;
2. writes the output (`write_checkpoint`): shards without a changed tensor are hard-linked (or copied), shards with
   one are rewritten by streaming the unchanged byte ranges from the source; the index, config.json and
   generation_config.json are updated;
3. checks the result from its headers (`verify_headers`): shapes, dtypes, ties, special ids, finite new rows, and
   every unchanged tensor present with identical bytes; `verify_directory` adds the full reload for small models.

    >>> plan = plan_checkpoint(Path("Llama-3-8B"))     # reads config.json and 4 headers, no weights
    >>> plan.changed, plan.rows, plan.dtype
    (('model.embed_tokens.weight', 'lm_head.weight'), 128256, 'BF16')
    >>> plan.file_of("lm_head.weight")
    'model-00004-of-00004.safetensors'
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenadapt.checkpoint import Verification, id_matches, verify_model_dir
from tokenadapt.errors import InputError
from tokenadapt.safetensors_io import (
    FLOAT_DTYPES,
    ByteRange,
    SafetensorsHeader,
    TensorEntry,
    TensorSpec,
    all_finite,
    link_or_copy,
    ranges_equal,
    read_header,
    write_safetensors,
)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
GENERATION_FILE = "generation_config.json"
_LLAMA_STYLE = ("model.embed_tokens.weight", "lm_head.weight")
# Architectures whose embedding and head tensors are known by name; anything else takes the in-memory path.
EMBEDDING_NAMES: dict[str, tuple[str, str]] = {
    name: _LLAMA_STYLE
    for name in (
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
    )
}


class Unsupported(Exception):
    """The checkpoint is not one the file-level path handles with certainty; the message says why."""


@dataclass(frozen=True)
class CheckpointPlan:
    """What a file-level transplant reads and rewrites. `output_name` is None for tied embeddings."""

    directory: Path
    architecture: str
    config: dict[str, Any]
    index: dict[str, Any] | None
    shards: dict[str, SafetensorsHeader]
    input_name: str
    output_name: str | None
    rows: int
    hidden_size: int
    dtype: str
    warnings: tuple[str, ...] = ()

    @property
    def tied(self) -> bool:
        return self.output_name is None

    @property
    def changed(self) -> tuple[str, ...]:
        return (self.input_name,) if self.output_name is None else (self.input_name, self.output_name)

    @property
    def torch_dtype(self) -> torch.dtype:
        return FLOAT_DTYPES[self.dtype]

    @property
    def total_bytes(self) -> int:
        return sum(header.file_size for header in self.shards.values())

    @property
    def embedding_bytes(self) -> int:
        return sum(self.entry(name).nbytes for name in self.changed)

    def file_of(self, name: str) -> str:
        for file, header in self.shards.items():
            if name in header.tensors:
                return file
        raise KeyError(name)

    def entry(self, name: str) -> TensorEntry:
        return self.shards[self.file_of(name)].tensors[name]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(
            f"Cannot read the {what} {path}: {error.strerror or error}.",
            "Check the path, and that this user may read it.",
        ) from error
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(
            f"The {what} {path} cannot be read as JSON ({error}).",
            "The file is truncated or corrupted: re-download or re-save the model.",
        ) from error


def plan_checkpoint(directory: Path) -> CheckpointPlan:
    """Plan a file-level transplant of `directory` from its config and shard headers.

    Raises `Unsupported` (take the in-memory path) for anything not recognised with certainty: no safetensors
    weights, an unknown or quantized architecture, unexpected tensor names, ties that disagree with the config, a
    second tensor of the vocabulary's size. Raises `InputError` for a checkpoint that is broken either way (an
    unreadable config or index, a truncated shard, an index naming a missing file or tensor).
    """
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise Unsupported(f"{directory} has no config.json")
    config = _read_json(config_path, "model config")
    if not isinstance(config, dict):
        raise InputError(f"{config_path} is not a JSON object.", "Re-download or re-save the model.")
    architectures = config.get("architectures")
    if not (isinstance(architectures, list) and len(architectures) == 1 and architectures[0] in EMBEDDING_NAMES):
        raise Unsupported(f"architecture {architectures} is not in the file-level table")
    architecture = str(architectures[0])
    if config.get("quantization_config") is not None:
        raise Unsupported("the checkpoint is quantized")
    if not isinstance(config.get("vocab_size"), int):
        raise Unsupported("config.json has no top-level integer vocab_size")
    index, shards = _read_shards(directory)
    input_name, output_name = EMBEDDING_NAMES[architecture]
    names = {name: file for file, header in shards.items() for name in header.tensors}
    if input_name not in names:
        raise Unsupported(f"no tensor {input_name} in the checkpoint")
    tied = _tie_word_embeddings(directory)
    if tied and output_name in names:
        raise Unsupported(f"tie_word_embeddings is true but {output_name} is stored too")
    if not tied and output_name not in names:
        raise Unsupported(f"tie_word_embeddings is false but there is no {output_name}")
    embedding = shards[names[input_name]].tensors[input_name]
    if embedding.dtype not in FLOAT_DTYPES or len(embedding.shape) != 2 or min(embedding.shape) == 0:
        raise Unsupported(f"{input_name} is {embedding.dtype} {list(embedding.shape)}, not a float matrix")
    changed = (input_name,) if tied else (input_name, output_name)
    for name in changed[1:]:
        head = shards[names[name]].tensors[name]
        if (head.dtype, head.shape) != (embedding.dtype, embedding.shape):
            raise Unsupported(f"{name} ({head.dtype} {list(head.shape)}) differs from {input_name}")
    rows, hidden = embedding.shape
    for name, file in names.items():
        shape = shards[file].tensors[name].shape
        if name not in changed and shape and rows in (shape[0], shape[-1]):
            raise Unsupported(f"tensor {name} {list(shape)} also has the vocabulary's size {rows}")
    warnings: list[str] = []
    if config["vocab_size"] != rows:
        warnings.append(
            f"config.json said vocab_size={config['vocab_size']} but {input_name} has {rows} rows; the rows were "
            "trusted and the output's config states its real size"
        )
    return CheckpointPlan(
        directory=directory,
        architecture=architecture,
        config=config,
        index=index,
        shards=shards,
        input_name=input_name,
        output_name=None if tied else output_name,
        rows=rows,
        hidden_size=hidden,
        dtype=embedding.dtype,
        warnings=tuple(warnings),
    )


def _tie_word_embeddings(directory: Path) -> bool:
    """The config's tie_word_embeddings as transformers reads it (absent keys take the config class default)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"transformers cannot read {directory / CONFIG_FILE}: {error}", "Fix or re-download it."
        ) from error
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))


def _read_shards(directory: Path) -> tuple[dict[str, Any] | None, dict[str, SafetensorsHeader]]:
    """(index or None, file name -> header), as transformers picks them: model.safetensors first, then an index."""
    if (directory / SINGLE_FILE).is_file():
        return None, {SINGLE_FILE: read_header(directory / SINGLE_FILE)}
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        raise Unsupported("no model.safetensors or model.safetensors.index.json")
    index = _read_json(index_path, "safetensors index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not (
        isinstance(weight_map, dict)
        and weight_map
        and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    ):
        raise InputError(f"{index_path} has no weight_map of tensor names to files.", "Re-download the model.")
    shards: dict[str, SafetensorsHeader] = {}
    for file in sorted(set(weight_map.values())):
        if Path(file).name != file or file in (".", ".."):
            raise InputError(f"{index_path} names the file {file!r}, which is not a file beside it.", "Fix the index.")
        if not (directory / file).is_file():
            raise InputError(
                f"{index_path} lists tensors in {file}, which is missing.",
                "The download is incomplete: fetch every shard the index names.",
            )
        shards[file] = read_header(directory / file)
    for name, file in weight_map.items():
        if name not in shards[file].tensors:
            raise InputError(f"{index_path} says {name} is in {file}, but it is not.", "Re-download the model.")
    for file, header in shards.items():
        unlisted = [name for name in header.tensors if weight_map.get(name) != file]
        if unlisted:
            raise Unsupported(f"{file} holds tensors the index does not assign to it ({unlisted[0]})")
    return index, shards


@dataclass
class WriteSummary:
    """How each output weight file was made."""

    files: dict[str, str] = field(default_factory=dict)  # file -> "rewritten" | "linked" | "copied"

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for how in self.files.values():
            found[how] = found.get(how, 0) + 1
        return found


def write_checkpoint(
    plan: CheckpointPlan,
    out: Path,
    new_tensors: dict[str, TensorSpec],
    special_ids: dict[str, Any],
    link: bool = True,
) -> WriteSummary:
    """Write the transplanted checkpoint into `out` (an empty staging directory).

    `new_tensors` replaces each changed tensor (same name, new shape, its bytes computed when the writer reaches
    it); shards holding one are rewritten in their original tensor order, the others hard-linked (`link`) or
    copied. The index's total_size, config.json's vocab_size and bos/eos/pad ids, and generation_config.json's ids
    follow the new tensors.
    """
    summary = WriteSummary()
    sizes: dict[str, tuple[int, int]] = {}  # name -> (bytes, elements)
    for file, header in plan.shards.items():
        if not any(name in new_tensors for name in header.tensors):
            summary.files[file] = link_or_copy(header.path, out / file, link)
            sizes.update({name: (e.nbytes, e.numel) for name, e in header.tensors.items()})
            continue
        specs = [
            new_tensors.get(name) or TensorSpec(name, e.dtype, e.shape, _range(header, name))
            for name, e in header.tensors.items()
        ]
        written = write_safetensors(out / file, specs, header.metadata)
        sizes.update({name: (e.nbytes, e.numel) for name, e in written.tensors.items()})
        summary.files[file] = "rewritten"
    if plan.index is not None:
        index = json.loads(json.dumps(plan.index))
        metadata = index.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            metadata = index["metadata"] = {}
        metadata["total_size"] = sum(size for size, _ in sizes.values())
        if "total_parameters" in metadata:
            metadata["total_parameters"] = sum(count for _, count in sizes.values())
        _write_json(out / INDEX_FILE, index)
    rows = new_tensors[plan.input_name].shape[0]
    _write_json(out / CONFIG_FILE, updated_config(plan.config, rows, special_ids))
    _write_json(out / GENERATION_FILE, updated_generation_config(plan.directory / GENERATION_FILE, special_ids))
    return summary


def updated_config(config: dict[str, Any], rows: int, special_ids: dict[str, Any]) -> dict[str, Any]:
    """config.json for the new vocabulary: vocab_size = rows, bos/eos/pad ids = the new tokenizer's.

    >>> updated_config({"vocab_size": 49152, "eos_token_id": 2}, 128256, {"bos": 128000, "eos": 128001, "pad": None})
    {'vocab_size': 128256, 'eos_token_id': 128001, 'bos_token_id': 128000, 'pad_token_id': None}
    """
    new = dict(config)
    new["vocab_size"] = rows
    for role in ("bos", "eos", "pad"):
        new[f"{role}_token_id"] = special_ids.get(role)
    return new


def updated_generation_config(path: Path, special_ids: dict[str, Any]) -> dict[str, Any]:
    """The source's generation_config.json (or a minimal one) with the new bos/eos/pad ids."""
    import transformers

    config: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, ValueError):
            config = {}  # unreadable: transformers would fall back to the model config too
    if not config:
        config = {"_from_model_config": True, "transformers_version": transformers.__version__}
    for role in ("bos", "eos", "pad"):
        value = special_ids.get(role)
        if value is None:
            config.pop(f"{role}_token_id", None)
        else:
            config[f"{role}_token_id"] = value
    return config


def _range(header: SafetensorsHeader, name: str) -> ByteRange:
    return ByteRange(header.path, header.offset(name), header.tensors[name].nbytes)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def verify_headers(directory: Path, source: CheckpointPlan | None = None, tokenizer: Any = None) -> Verification:
    """Check a transplanted directory without loading the model (see the module docstring).

    With `source` (the plan of the original), also: the new tensors keep its dtype, and every tensor it had apart
    from the changed ones is present with the same dtype, shape and bytes (hard links count as identical).
    `tokenizer`: the directory's tokenizer, already loaded (else it is loaded here).
    """
    from transformers import AutoTokenizer

    result = Verification(kind="headers")

    def check(name: str, ok: bool, problem: str) -> None:
        result.checks[name] = result.checks.get(name, True) and bool(ok)
        if not ok:
            result.problems.append(problem)

    try:
        plan = plan_checkpoint(directory)
    except (Unsupported, InputError) as error:
        check("headers_valid", False, f"the checkpoint's config, index or headers are not valid: {error}")
        return result
    check("headers_valid", True, "")
    try:
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # tokenizers raises bare Exceptions for unreadable files
        check("tokenizer_loads", False, f"the saved tokenizer does not load: {error}")
        return result
    check("rows_cover_tokenizer", plan.rows >= len(tokenizer), f"{plan.rows} rows < {len(tokenizer)} ids")
    check(
        "vocab_size_matches",
        plan.config.get("vocab_size") == plan.rows,
        f"config vocab_size={plan.config.get('vocab_size')} but the embedding has {plan.rows} rows",
    )
    for role in ("bos", "eos", "pad"):
        configured, declared = plan.config.get(f"{role}_token_id"), getattr(tokenizer, f"{role}_token_id", None)
        check(
            f"{role}_id_matches",
            id_matches(configured, declared),
            f"config {role}_token_id={configured}, tokenizer says {declared}",
        )
    if source is not None:
        check(
            "tied_as_configured",
            plan.tied == source.tied and plan.architecture == source.architecture,
            f"tied={plan.tied} ({plan.architecture}), the source was tied={source.tied} ({source.architecture})",
        )
        check("dtype_kept", plan.dtype == source.dtype, f"embeddings are {plan.dtype}, the source's {source.dtype}")
        _check_unchanged(plan, source, check)
    finite = all(all_finite(plan.shards[plan.file_of(name)], name) for name in plan.changed)
    check("finite_embeddings", finite, "embedding matrices contain NaN or infinite values")
    return result


def _check_unchanged(plan: CheckpointPlan, source: CheckpointPlan, check: Any) -> None:
    """Every tensor of `source` except the changed ones: same dtype, shape and bytes in `plan`'s files."""
    missing, differ = [], []
    for file, header in source.shards.items():
        target = plan.directory / file
        shared = target.is_file() and os.path.samefile(header.path, target)
        for name, entry in header.tensors.items():
            if name in source.changed:
                continue
            try:
                out_file = plan.file_of(name)
            except KeyError:
                missing.append(name)
                continue
            out_header = plan.shards[out_file]
            out_entry = out_header.tensors[name]
            same_kind = (out_entry.dtype, out_entry.shape) == (entry.dtype, entry.shape)
            if not same_kind or not (shared or ranges_equal(_range(header, name), _range(out_header, name))):
                differ.append(name)
    known = {name for header in source.shards.values() for name in header.tensors}
    extra = [name for header in plan.shards.values() for name in header.tensors if name not in known]
    check(
        "same_tensor_names",
        not missing and not extra,
        f"tensors missing from the output: {missing[:5]}; tensors the source did not have: {extra[:5]}",
    )
    check("unchanged_tensors_identical", not differ, f"tensors whose bytes or shape changed: {differ[:5]}")


def _saved_tokenizer(directory: Path) -> Any:
    """The directory's tokenizer, or None when it does not load (the verification passes then say why)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception:  # tokenizers raises bare Exceptions; verify_headers reports the failure as a check
        return None


def verify_directory(directory: Path, full_max_bytes: int, source: CheckpointPlan | None = None) -> Verification:
    """Verify a model directory: header checks when it is a file-level checkpoint, plus the full reload and scoring
    pass (`verify_model_dir`) when its weights take at most `full_max_bytes`; other directories are reloaded."""
    if not (directory / CONFIG_FILE).is_file():
        raise InputError(f"{directory} is not a model directory (no config.json).", "Pass the OUT of a transplant.")
    try:
        plan = plan_checkpoint(directory)
    except Unsupported:
        return verify_model_dir(directory)
    except InputError as error:
        return Verification(kind="headers", checks={"headers_valid": False}, problems=[str(error)])
    tokenizer = _saved_tokenizer(directory)  # loaded once for both passes (a large vocabulary takes a second)
    result = verify_headers(directory, source, tokenizer)
    if plan.total_bytes <= full_max_bytes:
        full = verify_model_dir(directory, tokenizer)
        for name, ok in full.checks.items():
            result.checks[name] = result.checks.get(name, True) and ok
        result.problems += [p for p in full.problems if p not in result.problems]
        result.loss, result.kind = full.loss, "headers+reload"
    return result
