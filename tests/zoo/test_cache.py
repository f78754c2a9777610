"""Input digests: a folder's sha256 is reproducible by hand, and a file is read again only when it changes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tokenadapt.zoo import cache
from tokenadapt.zoo.cache import remembered_sha256, sha256_file, sha256_tree


def make_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "model.safetensors").write_bytes(os.urandom(3000))
    (root / "a-b.txt").write_text("ü")  # "a-b.txt" sorts before "sub/..." as a string, as `LC_ALL=C sort` does
    (root / ".cache").mkdir()
    (root / ".cache" / "lock").write_text("ignored")
    return root


def test_sha256_tree_is_the_documented_recipe(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")
    names = ["a-b.txt", "config.json", "sub/model.safetensors"]
    lines = "\n".join(f"{n} {hashlib.sha256((folder / n).read_bytes()).hexdigest()}" for n in names)
    assert sha256_tree(folder) == hashlib.sha256(lines.encode()).hexdigest()
    (folder / ".cache" / "lock").write_text("hidden files do not count")
    assert sha256_tree(folder) == hashlib.sha256(lines.encode()).hexdigest()
    copy = make_folder(tmp_path / "copy")
    (copy / "sub" / "model.safetensors").write_bytes((folder / "sub" / "model.safetensors").read_bytes())
    assert sha256_tree(copy) == sha256_tree(folder)  # where the folder lies does not matter
    (copy / "config.json").rename(copy / "config2.json")
    assert sha256_tree(copy) != sha256_tree(folder)  # names count


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 1000)
    calls: list[Path] = []

    def counting(file: Path, chunk_size: int = 1 << 22) -> str:
        calls.append(file)
        return sha256_file(file, chunk_size)

    monkeypatch.setattr(cache, "sha256_file", counting)
    first = remembered_sha256(path)
    assert first == hashlib.sha256(b"x" * 1000).hexdigest()
    assert remembered_sha256(path) == first and len(calls) == 1
    path.write_bytes(b"y" * 1000)  # same size: the modification time tells
    os.utime(path, ns=(1, 1))
    assert remembered_sha256(path) == hashlib.sha256(b"y" * 1000).hexdigest() and len(calls) == 2
