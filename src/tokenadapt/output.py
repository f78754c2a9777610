"""Write an output directory so that it appears whole or not at all, and never at the expense of an input.

with staged_output(Path("out"), inputs=[model_dir], overwrite=False) as tmp:
    ...write into tmp...
# out/ now exists, complete; on any error (Ctrl-C, full disk) tmp is removed and out/ is untouched

The staging directory is a hidden sibling `.out.XXXX.partial` holding a lock (`flock`) for as long as its process
lives. A process killed outright (kill -9, power loss) cannot remove it; it never becomes `out`, and the next
`staged_output` for the same `out` removes every partial whose lock is free (its owner is dead). The same goes for
the `.out.XXXX.replaced` directory of an `--overwrite` killed between its two renames: the old `out` is put back.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tokenadapt.errors import OutputError

LOCK_NAME = ".tokenadapt.lock"
_UNLOCKED_GRACE_S = 60.0  # a staging directory this young may not have its lock yet


def check_output_path(out: Path, inputs: Sequence[Path], overwrite: bool) -> Path:
    """Resolve OUT and refuse the locations that would lose or damage something; returns the resolved path."""
    out = out.expanduser().resolve()
    for given in inputs:
        source = given.expanduser().resolve()
        if out == source or out in source.parents:
            raise OutputError(
                f"The output directory {out} is, or contains, an input ({source}).",
                "Choose an OUT outside every input: tokenadapt never writes over what it reads.",
            )
        if source in out.parents:
            raise OutputError(
                f"The output directory {out} lies inside the input directory {source}.",
                "Choose an OUT outside the input directory.",
            )
    if out.exists() and not overwrite:
        raise OutputError(f"The output {out} already exists.", "Choose a new OUT, or pass --overwrite to replace it.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output {out} exists and is not a directory.", "Choose another OUT.")
    parent = out.parent
    if not parent.exists():
        raise OutputError(
            f"The parent directory of OUT ({parent}) does not exist.", "Create it first, or fix the path."
        )
    if not parent.is_dir():
        raise OutputError(f"OUT's parent {parent} is a file, not a directory.", "Choose an OUT inside a directory.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write in {parent}.", "Choose an OUT in a directory you can write to.")
    return out


def _hold_lock(directory: Path) -> int:
    """Create and lock `directory`/LOCK_NAME; the lock lasts while the returned descriptor is open."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _owner_alive(directory: Path) -> bool:
    """Whether the process that made a staging directory still runs (holds its lock)."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        try:
            return time.time() - directory.stat().st_mtime < _UNLOCKED_GRACE_S
        except FileNotFoundError:
            return True  # already gone
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it
    return False


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove the staging directories of `out` left by killed runs; put back an `out` lost mid-overwrite.

    Returns what was removed. Directories of live runs (their lock is held) are left alone.
    """
    removed: list[Path] = []
    pattern = f".{glob.escape(out.name)}.*"
    for candidate in sorted(out.parent.glob(pattern)):
        if candidate.suffix not in (".partial", ".replaced") or candidate.is_symlink() or not candidate.is_dir():
            continue
        if _owner_alive(candidate):
            continue
        kept = candidate / out.name
        if candidate.suffix == ".replaced" and kept.is_dir() and not out.exists():
            os.replace(kept, out)  # killed between the two renames of an overwrite: the old OUT comes back
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


@contextmanager
def staged_output(out: Path, inputs: Sequence[Path] = (), overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside OUT; move it to OUT only when the block completes."""
    clean_stale_partials(out.expanduser().resolve())  # first: it may put back an OUT lost mid-overwrite
    out = check_output_path(out, inputs, overwrite)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as error:  # os.access said yes, the file system says no (read-only mount, /proc, quota)
        raise _write_error(error, out, where=out.parent) from error
    locks = [_hold_lock(tmp)]
    try:
        yield tmp
        (tmp / LOCK_NAME).unlink()  # the lock stays held through the open descriptor
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".replaced", dir=out.parent))
            locks.append(_hold_lock(aside))
            os.replace(out, aside / out.name)
            os.replace(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as error:
        if error.errno in _ENVIRONMENT_ERRNOS:
            raise _write_error(error, out) from error
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        for fd in locks:
            os.close(fd)


# errors that say something about the disk or the permissions where OUT goes, not about tokenadapt
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _write_error(error: OSError, out: Path, where: Path | None = None) -> OutputError:
    """The user-facing form of an OSError met while writing OUT: what failed, where, and what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"The disk holding {out.parent} is full (or your quota on it is).",
            "Free some space or choose OUT on another disk; nothing was written.",
        )
    where = where or error.filename or out.parent
    return OutputError(
        f"Making OUT failed: {error.strerror or error} ({where}).",
        f"Check that every input is readable and that you can write in {out.parent} (or choose another OUT); "
        "nothing was written and the inputs are untouched.",
    )
