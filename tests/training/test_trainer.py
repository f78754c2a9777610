from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.conftest import CORPUS
from tokenadapt.errors import InputError, OutputError
from tokenadapt.options import TrainTokenizerOptions
from tokenadapt.training import train_tokenizer
from tokenadapt.training.trainer import REPORT_NAME


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    root = tmp_path / "text"
    root.mkdir()
    for i in range(40):
        (root / f"doc{i:02d}.txt").write_text("\n".join(CORPUS[i % 7 :: 3]) + f"\nnumber {i}\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("mode", ["bpe", "supertoken", "superbpe"])
def test_trained_directory_loads_with_auto_tokenizer(text_dir: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "tok"
    options = TrainTokenizerOptions(mode=mode, vocab_size=500, held_out=0.2)
    result = train_tokenizer([str(text_dir)], out, options, command="tokenadapt train-tokenizer ...")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert len(tokenizer) == result.vocab_size <= 500
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    sample = "Der schnelle braune Fuchs 🦊 springt.\n"
    assert tokenizer.decode(tokenizer.encode(sample, add_special_tokens=False)) == sample

    report = json.loads((out / REPORT_NAME).read_text())
    assert report["mode"] == mode and report["options"]["vocab_size"] == 500
    assert report["held_out"]["round_trip"] is True
    held = report["held_out"]
    assert held["bytes"] == report["sources"][0]["held_out_bytes"] > 0
    assert held["bytes_per_token"] == pytest.approx(held["bytes"] / held["tokens"])
    assert report["peak_rss_mb"] > 0 and "train" in report["timings"]
    assert len(report["sources"][0]["sha256"]) == 64
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_special_tokens_are_configurable_and_can_be_left_out(text_dir: Path, tmp_path: Path) -> None:
    options = TrainTokenizerOptions(
        vocab_size=400, bos_token="<|begin|>", eos_token="<|end|>", pad_token="", unk_token=""
    )
    train_tokenizer([str(text_dir)], tmp_path / "tok", options)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|begin|>", "<|end|>", None)
    assert tokenizer.convert_tokens_to_ids(["<|begin|>", "<|end|>"]) == [0, 1]


def test_too_little_text_for_the_vocabulary_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("tiny text\n" * 10)
    result = train_tokenizer([str(small)], tmp_path / "tok", TrainTokenizerOptions(vocab_size=5000, held_out=0.0))
    assert result.vocab_size < 5000
    assert any("fewer than the 5000" in w for w in result.warnings)
    assert any("No chunk was held out" in w for w in result.warnings)


def test_bad_input_is_refused_before_anything_is_written(text_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    with pytest.raises(InputError, match="--vocab-size"):
        train_tokenizer([str(text_dir)], out, TrainTokenizerOptions(vocab_size=100))
    empty = tmp_path / "empty.txt"
    empty.write_text("   ")
    with pytest.raises(InputError, match="empty"):
        train_tokenizer([str(empty)], out, TrainTokenizerOptions(vocab_size=400))
    with pytest.raises(InputError, match="neither a built-in"):
        train_tokenizer(["no-such-text"], out, TrainTokenizerOptions(vocab_size=400))
    with pytest.raises(OutputError, match="inside the input directory"):
        train_tokenizer([str(text_dir)], text_dir / "tok", TrainTokenizerOptions(vocab_size=400))
    assert not out.exists() and not (text_dir / "tok").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "text"]


def test_an_existing_out_is_kept_unless_overwrite(text_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.raises(OutputError, match="already exists"):
        train_tokenizer([str(text_dir)], out, TrainTokenizerOptions(vocab_size=400))
    assert (out / "mine.txt").read_text() == "precious"
    train_tokenizer([str(text_dir)], out, TrainTokenizerOptions(vocab_size=400, overwrite=True))
    assert (out / "tokenizer.json").exists() and not (out / "mine.txt").exists()


def test_training_is_deterministic(text_dir: Path, tmp_path: Path) -> None:
    for mode in ("supertoken", "superbpe"):
        options = TrainTokenizerOptions(mode=mode, vocab_size=450)
        train_tokenizer([str(text_dir)], tmp_path / f"{mode}1", options)
        train_tokenizer([str(text_dir)], tmp_path / f"{mode}2", options)
        first = (tmp_path / f"{mode}1" / "tokenizer.json").read_bytes()
        assert first == (tmp_path / f"{mode}2" / "tokenizer.json").read_bytes(), mode
