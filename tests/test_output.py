"""Outputs appear whole or not at all, and never over an input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenadapt.errors import OutputError
from tokenadapt.output import check_output_path, staged_output


def test_output_appears_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(out) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-write")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with staged_output(out) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert (out / "whole.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"), staged_output(out):
        pass
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(KeyboardInterrupt), staged_output(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert (out / "keep.txt").read_text() == "mine"  # an interrupted overwrite keeps the old output
    with staged_output(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_may_never_be_or_touch_an_input(tmp_path: Path, where: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    out = {"same": model, "inside": model / "out", "parent": tmp_path}[where]
    with pytest.raises(OutputError):
        check_output_path(out, [model], overwrite=True)


def test_missing_parent_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "such" / "out", [], overwrite=False)
