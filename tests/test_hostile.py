"""Hostile and broken input: every case ends in a verified output or one clear error (exit 2, no traceback).

Tokenizers are written as raw tokenizer.json text so that they can hold what no library would write: duplicate
keys, several tokens on one id, empty tokens, lone surrogates, ids in the billions, thousands of special tokens.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from tests.conftest import save_model_dir, tiny_llama
from tokenadapt.cli import main
from tokenadapt.errors import TokenAdaptError
from tokenadapt.options import TransplantOptions
from tokenadapt.transplant import transplant

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
METASPACE = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}


def tokenizer_json(
    pairs: Sequence[tuple[str, int]], added: Sequence[tuple[int, str, bool]] = (), family: str = "byte"
) -> str:
    """tokenizer.json text for a BPE without merges; `pairs` may repeat strings or ids (written verbatim)."""
    vocab = "{" + ",".join(f"{json.dumps(token)}:{token_id}" for token, token_id in pairs) + "}"
    component = BYTE_LEVEL if family == "byte" else METASPACE
    added_tokens = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": special}
        for i, c, special in added
    ]  # fmt: skip
    model = (
        '{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,'
        f'"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{vocab},"merges":[]}}'
    )
    return (
        f'{{"version":"1.0","truncation":null,"padding":null,"added_tokens":{json.dumps(added_tokens)},'
        f'"normalizer":null,"pre_tokenizer":{json.dumps(component)},"post_processor":null,'
        f'"decoder":{json.dumps(component)},"model":{model}}}'
    )


WORDS = [("Ġthe", 0), ("Ġcat", 1), ("the", 2), ("a", 3), ("b", 4), ("Ġ", 5), ("é", 6), ("Ċ", 7)]


def run(capsys: pytest.CaptureFixture[str], model: Path, tokenizer: Path, out: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-q", "transplant", str(model), str(tokenizer), str(out), "--method", "subword-mean", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:
        report = json.loads((out / "transplant_report.json").read_text())
        assert report["verification"]["passed"], report["verification"]
    else:
        assert code == 2 and err.startswith("error: ") and not out.exists(), err
    return code, err


NEW_TOKENIZERS: dict[str, tuple[str | bytes, str | None]] = {
    "duplicate strings": (tokenizer_json([*WORDS, ("a", 8), ("Ġthe", 9)]), None),
    "several strings on one id": (tokenizer_json([("Ġthe", 0), ("Ġcat", 0), ("a", 1), ("b", 1)]), None),
    "empty token": (tokenizer_json([("", 0), *[(t, i + 1) for t, i in WORDS]]), None),
    "holes in the ids": (tokenizer_json([("Ġthe", 0), ("a", 500)]), None),
    "ids in the billions": (tokenizer_json([("Ġthe", 0), ("a", 4_000_000_000)]), "contiguous ids"),
    "lone surrogate": (tokenizer_json([("\ud800", 0), ("a", 1)]), "tokenizer.json"),
    "invalid UTF-8 bytes": (tokenizer_json(WORDS).encode().replace(b"\\u00e9", b"\xff\xfe"), "not valid JSON"),
    "byte-fallback pieces and NUL": (
        tokenizer_json([("▁a", 0), ("<0xFF>", 1), ("▁", 2), ("\x00", 3), ("\ufffd", 4)], family="meta"),
        None,
    ),
    "3000 special tokens": (tokenizer_json(WORDS, [(8 + i, f"<|extra_{i}|>", True) for i in range(3000)]), None),
    "special tokens repeating tokens": (
        tokenizer_json(WORDS, [(0, "a", True), (8, "</s>", True), (9, "", True)]),
        None,
    ),
    "no tokens": (tokenizer_json([]), "no tokens"),
    "truncated": (tokenizer_json(WORDS)[:200], "truncated"),
    "JSON but no tokenizer": ('{"vocab": {"a": 0}}', "tokenizer.json"),
}


@pytest.mark.parametrize("case", list(NEW_TOKENIZERS))
def test_hostile_new_tokenizers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tied_model_dir: Path, case: str
) -> None:
    text, expected = NEW_TOKENIZERS[case]
    path = tmp_path / "tokenizer.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    code, err = run(capsys, tied_model_dir, path, tmp_path / "out")
    assert code == (0 if expected is None else 2), err
    if expected is not None:
        assert expected in err, err


def lie_about_vocab_size(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["vocab_size"] = 1000
    (model / "config.json").write_text(json.dumps(config))


def truncate(name: str, keep: int) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        data = (model / name).read_bytes()
        (model / name).write_bytes(data[:keep])

    return damage


def shard_and(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(model: Path) -> None:
        (model / "model.safetensors").unlink()
        tiny_llama(len(PreTrainedTokenizerFast.from_pretrained(str(model))), tied=False).save_pretrained(
            str(model), max_shard_size="40KB"
        )
        damage(model)

    return prepare


def edit_index(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        index = json.loads((model / "model.safetensors.index.json").read_text())
        change(index)
        (model / "model.safetensors.index.json").write_text(json.dumps(index))

    return damage


def _drop_shard(model: Path) -> None:
    sorted(model.glob("model-0*.safetensors"))[1].unlink()


BROKEN_MODELS: dict[str, tuple[Callable[[Path], None], str | None, str | None]] = {
    # name: (damage, expected error on the file-level path or None, ... on the in-memory path)
    "config lies about vocab_size": (lie_about_vocab_size, None, "vocab_size"),
    "truncated weights": (truncate("model.safetensors", -100), "truncated", "truncated"),
    "truncated safetensors header": (truncate("model.safetensors", 50), "truncated", "truncated"),
    "truncated config.json": (truncate("config.json", 30), "config", "config"),
    "truncated tokenizer.json": (truncate("tokenizer.json", 300), "truncated", "truncated"),
    "missing shard": (shard_and(_drop_shard), "missing", "No such file"),
    "index names a file outside": (
        shard_and(edit_index(lambda i: i["weight_map"].update({"lm_head.weight": "../x.safetensors"}))),
        "not a file beside it",
        None,
    ),
}


@pytest.mark.parametrize("io", ["auto", "in-memory"])
@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_broken_models(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    untied_model_dir: Path,
    new_tokenizer_dir: Path,
    case: str,
    io: str,
) -> None:
    damage, file_level_error, in_memory_error = BROKEN_MODELS[case]
    damage(untied_model_dir)
    expected = file_level_error if io == "auto" else in_memory_error
    code, err = run(capsys, untied_model_dir, new_tokenizer_dir, tmp_path / "out", "--checkpoint-io", io)
    if case == "index names a file outside" and io == "in-memory":
        assert code in (0, 2)  # transformers' own loader decides; either way no traceback and nothing half-written
        return
    assert code == (0 if expected is None else 2), err
    if expected is not None:
        assert expected in err, err
    if case == "config lies about vocab_size" and io == "auto":
        report = json.loads((tmp_path / "out" / "transplant_report.json").read_text())
        assert any("vocab_size=1000" in w for w in report["warnings"])
        assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == report["model"]["rows"]


@pytest.mark.parametrize("extra_rows", [37, -50])
@pytest.mark.parametrize("io", ["auto", "in-memory"])
def test_padded_vocabularies_and_ids_beyond_the_rows(
    tmp_path: Path,
    byte_level_tokenizer: PreTrainedTokenizerFast,
    new_tokenizer_dir: Path,
    extra_rows: int,
    io: str,
) -> None:
    """More rows than tokens (padded), or tokens beyond the rows: ids without a row are never copied from."""
    model_dir = tmp_path / "model"
    tiny_llama(len(byte_level_tokenizer) + extra_rows).save_pretrained(str(model_dir))
    byte_level_tokenizer.save_pretrained(str(model_dir))
    result = transplant(
        model_dir, new_tokenizer_dir, tmp_path / "out", TransplantOptions(method="mean", checkpoint_io=io)
    )
    assert result.verification is not None and result.verification["passed"]
    assert result.model["old_rows"] == len(byte_level_tokenizer) + extra_rows


# ---------------------------------------------------------------------------------------------------------------
# Generated vocabularies
# ---------------------------------------------------------------------------------------------------------------

_PIECES = ["a", "b", "the", "Ġ", "▁", " ", "\x00", "é", "日本", "<", ">", "|", "\n", "🙂", "<0xFF>", "##", ""]
_SPECIALS = ["<s>", "</s>", "<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "", "a", "Ġthe"]
_counter = itertools.count()


@st.composite
def vocabularies(draw: st.DrawFn) -> tuple[str, list[tuple[str, int]], list[tuple[int, str, bool]]]:
    tokens = draw(st.lists(st.lists(st.sampled_from(_PIECES), max_size=4).map("".join), min_size=0, max_size=30))
    id_style = draw(st.sampled_from(["sequential", "shuffled", "repeated", "gappy"]))
    if id_style == "sequential":
        ids = list(range(len(tokens)))
    elif id_style == "shuffled":
        ids = draw(st.permutations(list(range(len(tokens)))))
    elif id_style == "repeated":
        ids = [draw(st.integers(0, max(0, len(tokens) // 2))) for _ in tokens]
    else:
        ids = [draw(st.integers(0, 3000)) for _ in tokens]
    specials = draw(st.lists(st.tuples(st.sampled_from(_SPECIALS), st.booleans()), max_size=4))
    added = [(len(tokens) + i, content, special) for i, (content, special) in enumerate(specials)]
    return draw(st.sampled_from(["byte", "meta"])), list(zip(tokens, ids, strict=True)), added


@pytest.fixture(scope="module")
def shared_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import train_byte_level

    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("hostile") / "model", train_byte_level(), tied=False)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vocabulary=vocabularies(), side=st.sampled_from(["new", "old"]))
@example(vocabulary=("byte", [("", 0)], []), side="old")  # an old vocabulary without one real token (found by CI)
def test_generated_vocabularies_give_a_verified_output_or_a_clear_error(
    shared_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
    vocabulary: tuple[str, list[tuple[str, int]], list[tuple[int, str, bool]]],
    side: str,
) -> None:
    family, pairs, added = vocabulary
    work = tmp_path_factory.getbasetemp() / f"generated-{next(_counter)}"
    work.mkdir()
    hostile = work / "tokenizer.json"
    hostile.write_text(tokenizer_json(pairs, added, family), encoding="utf-8")
    model, tokenizer = shared_model, hostile
    if side == "old":  # the model's own tokenizer is the hostile one
        model = work / "model"
        shutil.copytree(shared_model, model)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (model / name).unlink(missing_ok=True)
        shutil.copy(hostile, model / "tokenizer.json")
        (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        tokenizer = shared_model
    try:
        result = transplant(model, tokenizer, work / "out", TransplantOptions(method="subword-mean"))
    except TokenAdaptError as error:
        assert str(error) and not (work / "out").exists()
    else:
        assert result.verification is not None and result.verification["passed"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
