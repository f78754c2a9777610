"""Where tokenadapt keeps what it fetches and converts: never in the repository, always in one user cache.

The root is `$TOKENADAPT_CACHE` if set, else `$XDG_CACHE_HOME/tokenadapt`, else `~/.cache/tokenadapt`.
Every entry is written to a temporary sibling and renamed into place, so a crash never leaves a half-written entry,
and a lock file serialises two processes that fill the same entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CACHE_ENV = "TOKENADAPT_CACHE"


def cache_root() -> Path:
    """The cache directory (created on demand)."""
    if env := os.environ.get(CACHE_ENV):
        root = Path(env).expanduser()
    elif xdg := os.environ.get("XDG_CACHE_HOME"):
        root = Path(xdg).expanduser() / "tokenadapt"
    else:
        root = Path.home() / ".cache" / "tokenadapt"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_path(*parts: str) -> Path:
    """A path inside the cache, e.g. `cache_path("models", "smollm2-135m")`. Not created."""
    return cache_root().joinpath(*parts)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock named after `path` while filling it (other processes wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = path.parent / f".{path.name}.lock"
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it to `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(final: Path, data: bytes) -> None:
    """Write `data` to `final` through a temporary sibling and a rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, final)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def sha256_file(path: Path, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def remembered_sha256(path: Path) -> str:
    """`sha256_file(path)`, remembered in the cache under the file's identity (device, inode, size, mtime).

    A model's weights are read whole only the first time; any change to the file changes its identity and the
    digest is computed again. About 1 s per GB here.
    """
    stat = path.stat()
    identity = f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
    name = hashlib.sha256(f"{path.resolve()}|{identity}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
    memo = cache_path("digests", name)
    with contextlib.suppress(OSError):
        remembered = memo.read_text().strip()
        if len(remembered) == 64:
            return remembered
    digest = sha256_file(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run the hashing
        atomic_write_bytes(memo, digest.encode())
    return digest


def sha256_tree(folder: Path) -> str:
    """One digest for a folder's files: sha256 of the sorted lines "relative/path sha256-of-the-file".

    Hidden files and folders (".cache", ".git") are left out. The same bytes under the same names give the same
    digest anywhere; in a shell, inside the folder:

        find . -type f -not -path '*/.*' | LC_ALL=C sort | xargs sha256sum \\
            | awk '{print substr($2, 3) " " $1}' | head -c -1 | sha256sum
    """
    files = {
        file.relative_to(folder).as_posix(): file
        for file in folder.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    }
    lines = [f"{name} {remembered_sha256(files[name])}" for name in sorted(files)]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def write_checked_array(path: Path, array: np.ndarray) -> None:
    """Save an array as .npy with a sha256 sidecar, both atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())


def read_checked_array(path: Path) -> np.ndarray | None:
    """The cached array, or None if it is missing, has no checksum, or does not match it (then rebuild it)."""
    checksum = path.with_suffix(".sha256")
    if not path.exists() or not checksum.exists():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != checksum.read_text().strip():
        return None
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError:
        return None
