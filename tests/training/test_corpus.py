from __future__ import annotations

from pathlib import Path

import pytest

from tokenadapt.errors import InputError
from tokenadapt.training.corpus import Chunk, TrainingText, cut_document


def test_cut_document_tiles_the_text_and_cuts_after_newlines() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    pieces = cut_document(text, limit=50)
    assert "".join(pieces) == text
    assert all(len(p) <= 50 for p in pieces)
    assert all(p.endswith("\n") for p in pieces)


def test_cut_document_cuts_a_line_longer_than_the_limit() -> None:
    assert cut_document("x" * 25, limit=10) == ["x" * 10, "x" * 10, "x" * 5]
    assert cut_document("", limit=10) == []


def _write(tmp_path: Path, n_files: int = 30) -> Path:
    root = tmp_path / "texts"
    root.mkdir()
    for i in range(n_files):
        (root / f"doc{i:02d}.txt").write_text(f"document {i} says hello\n" * 5, encoding="utf-8")
    return root


def test_held_out_chunks_are_disjoint_from_training_and_fixed(tmp_path: Path) -> None:
    root = _write(tmp_path)
    text = TrainingText([str(root)], held_out=0.3)
    train = [c.id for c in text.chunks()]
    held = [c.id for c in text.chunks(held_out=True)]
    assert held and train
    assert not set(train) & set(held)
    assert len(train) + len(held) == 30
    assert held == [c.id for c in TrainingText([str(root)], held_out=0.3).chunks(held_out=True)]
    assert all(Chunk(i, "").held_out < 0.3 for i in held)


def test_scan_counts_bytes_and_hashes_the_text(tmp_path: Path) -> None:
    root = _write(tmp_path)
    text = TrainingText([str(root)], held_out=0.3)
    (source,) = text.scan()
    total = sum(len(f.read_bytes()) for f in root.iterdir())
    assert source["train_bytes"] + source["held_out_bytes"] == total
    assert source["held_out_bytes"] == sum(len(c.text.encode()) for c in text.chunks(held_out=True))
    assert source["origin"] == "local" and source["files"] == 30 and len(source["sha256"]) == 64


def test_max_bytes_stops_the_stream(tmp_path: Path) -> None:
    root = _write(tmp_path)
    capped = TrainingText([str(root)], held_out=0.0, max_bytes=300)
    chunks = list(capped.chunks())
    assert sum(len(c.text) for c in chunks[:-1]) < 300 <= sum(len(c.text) for c in chunks)
    assert capped.scan()[0]["train_bytes"] == sum(len(c.text) for c in chunks)


def test_bad_training_text_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="neither a built-in text"):
        TrainingText([str(tmp_path / "missing.txt")])
    with pytest.raises(InputError, match="No training text"):
        TrainingText([])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        TrainingText([str(empty)]).scan()
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        TrainingText([str(latin1)]).scan()
