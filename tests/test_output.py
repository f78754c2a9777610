"""Outputs appear whole or not at all, and never over an input."""

from __future__ import annotations

import errno
import os
import tempfile
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


def test_a_parent_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_output_path(tmp_path / "config.json" / "out", [], overwrite=False)


@pytest.mark.parametrize(
    "code, says", [(errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only"), (errno.EIO, "Input/output")]
)
def test_a_directory_the_file_system_refuses_is_an_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    """os.access may say yes where mkdir says no (a read-only mount, /proc, a quota): still one clear error."""

    def refuse(*args: object, **kwargs: object) -> str:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(OutputError, match=says) as caught, staged_output(tmp_path / "out"):
        pass
    assert str(tmp_path) in str(caught.value) and "nothing was written" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EIO, errno.EDQUOT])
def test_write_errors_mid_output_leave_nothing(tmp_path: Path, code: int) -> None:
    out = tmp_path / "out"
    says = "full" if code == errno.EDQUOT else "Making OUT failed"
    with pytest.raises(OutputError, match=says), staged_output(out) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise OSError(code, os.strerror(code), str(tmp / "half.bin"))
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_keep_their_traceback(tmp_path: Path) -> None:
    """An errno that says nothing about the disk is a bug in tokenadapt: it is not dressed up as a user error."""
    with pytest.raises(IsADirectoryError), staged_output(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub").read_bytes()
    assert list(tmp_path.iterdir()) == []
