"""Read files out of a pinned Debian package, without installing it.

Some built-in evaluation texts (the Python 3.11 documentation, the Debian Reference in ten languages) ship
only as Debian packages. Installing them would need root and would change the machine, so instead we `apt-get
download` the exact pinned version into a temporary directory, check the .deb's sha256, and read the members
we need straight out of its `ar` archive and `data.tar.*` in memory. Nothing is written outside the temporary
directory; callers cache what they derive from the members.

    pkg = DebianPackage("debian-reference-en", "2.100", sha256="9f31d3a1...")
    files = read_deb_members(pkg, r"usr/share/debian-reference/ch\\d+\\.en\\.html")
    files["usr/share/debian-reference/ch01.en.html"][:15]   # b'<?xml version="'
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tokenadapt.errors import ArtifactError
from tokenadapt.zoo.cache import sha256_file

AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
# What apt-get prints when its lists do not know the package or version (then `apt-get update` may help).
_UNKNOWN_MARKERS = (
    "Unable to locate package",
    "was not found",
    "Can't select candidate version",
    "has no installation",
)


@dataclass(frozen=True)
class DebianPackage:
    """One exact Debian binary package: `name=version`, pinned by the sha256 of the .deb file.

    `sha256` is None only while an artifact is being added (the check is then skipped).
    """

    name: str
    version: str
    sha256: str | None = None

    @property
    def spec(self) -> str:
        """The `apt-get download` argument, e.g. `python3.11-doc=3.11.2-6+deb12u9`."""
        return f"{self.name}={self.version}"


def read_deb_members(package: DebianPackage, pattern: str) -> dict[str, bytes]:
    """Download `package` and return its regular files whose path fully matches the regex `pattern`.

    Paths are relative, without a leading `./` (e.g. `usr/share/doc/...`); the dict is sorted by path. Raises
    ArtifactError when apt-get is missing, the version is gone from the mirror, the sha256 differs, or no
    member matches.
    """
    with tempfile.TemporaryDirectory(prefix="tokenadapt-apt-") as tmp:
        deb = download_deb(package, Path(tmp))
        members = read_deb_data(deb, pattern)
    if not members:
        raise ArtifactError(
            f"No file in {package.spec} matches {pattern!r}.",
            "The package layout changed; report this, or pass a local text file or directory instead.",
        )
    return members


def download_deb(package: DebianPackage, dest: Path) -> Path:
    """`apt-get download` the pinned package into `dest`, verify its sha256, and return the .deb path."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise ArtifactError(
            f"apt-get is not available on this machine, and this text comes from the Debian package {package.spec}.",
            "Run on a Debian or Ubuntu machine with Debian 12 (bookworm) package sources, or pass a local "
            "UTF-8 text file or directory of the text instead of the built-in name.",
        )
    result = _apt_download(apt_get, package, dest)
    if result.returncode != 0 and _is_unknown(result.stderr):
        # The package lists are missing or stale (fresh container): refresh them once and try again.
        _apt_update(apt_get, package)
        result = _apt_download(apt_get, package, dest)
    if result.returncode != 0:
        tail = " ".join(line for line in result.stderr.strip().splitlines() if line.startswith("E:"))
        raise ArtifactError(
            f"apt-get could not download {package.spec}: {tail or result.stderr.strip()[-300:]}",
            "The pinned version may have been superseded on the Debian mirror, or this machine's apt "
            "sources are not Debian 12 (bookworm) or are unreachable. Check `apt-cache policy "
            f"{package.name}`; if the version is gone, tokenadapt needs a new pin (report this), and "
            "meanwhile pass a local text file or directory instead of the built-in name.",
        )
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise ArtifactError(f"apt-get download {package.spec} left {len(debs)} .deb files.", "Report this as a bug.")
    deb = debs[0]
    if package.sha256 is not None:
        actual = sha256_file(deb)
        if actual != package.sha256:
            raise ArtifactError(
                f"{deb.name} has sha256 {actual}, expected {package.sha256}.",
                "The package on the Debian mirror differs from the one tokenadapt was built against; report "
                "this, or pass a local text file or directory instead of the built-in name.",
            )
    return deb


def read_deb_data(deb: Path, pattern: str) -> dict[str, bytes]:
    """The regular files of `deb`'s data archive whose path fully matches `pattern`, read in memory."""
    regex = re.compile(pattern)
    data_name, payload = _ar_data_member(deb)
    try:
        tarfile.open(fileobj=io.BytesIO(payload), mode="r:*").close()
    except tarfile.ReadError:
        # A compression this Python cannot read (zstd before 3.14): let dpkg-deb decompress it.
        payload = _dpkg_fsys_tarfile(deb, data_name)
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as archive:
        for info in archive:
            name = info.name[2:] if info.name.startswith("./") else info.name
            if not info.isreg() or not regex.fullmatch(name):
                continue
            handle = archive.extractfile(info)
            if handle is not None:
                found[name] = handle.read()
    return dict(sorted(found.items()))


def _ar_data_member(deb: Path) -> tuple[str, bytes]:
    """Return (name, bytes) of the `data.tar*` member of a .deb (a plain `ar` archive)."""
    blob = deb.read_bytes()
    if not blob.startswith(AR_MAGIC):
        raise ArtifactError(f"{deb.name} is not a Debian package (no ar header).", "Report this as a bug.")
    offset = len(AR_MAGIC)
    while offset + _AR_HEADER <= len(blob):
        header = blob[offset : offset + _AR_HEADER]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        start = offset + _AR_HEADER
        if name.startswith("data.tar"):
            return name, blob[start : start + size]
        offset = start + size + (size % 2)
    raise ArtifactError(f"{deb.name} has no data.tar member.", "Report this as a bug.")


def _apt_download(apt_get: str, package: DebianPackage, dest: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    command = [apt_get, "download", "-q", package.spec]
    try:
        return subprocess.run(command, cwd=dest, capture_output=True, text=True, env=env, check=False)
    except OSError as error:
        raise ArtifactError(f"Could not run apt-get: {error}.", "Check the apt installation.") from error


def _apt_update(apt_get: str, package: DebianPackage) -> None:
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise ArtifactError(
            f"apt does not know {package.spec}, and refreshing its package lists needs root.",
            "Run `sudo apt-get update` once, then try again; or pass a local text file or directory instead.",
        )
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run([apt_get, "update", "-q"], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise ArtifactError(
            f"`apt-get update` failed while looking for {package.spec}: {result.stderr.strip()[-300:]}",
            "Check that the Debian mirror is reachable, or pass a local text file or directory instead.",
        )


def _is_unknown(stderr: str) -> bool:
    return any(marker in stderr for marker in _UNKNOWN_MARKERS)


def _dpkg_fsys_tarfile(deb: Path, data_name: str) -> bytes:
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise ArtifactError(
            f"{deb.name} stores its files as {data_name}, which this Python cannot decompress, and "
            "dpkg-deb is not installed.",
            "Install dpkg (`apt-get install dpkg`), or pass a local text file or directory instead.",
        )
    result = subprocess.run([dpkg_deb, "--fsys-tarfile", str(deb)], capture_output=True, check=False)
    if result.returncode != 0:
        raise ArtifactError(
            f"dpkg-deb could not read {deb.name}: {result.stderr.decode(errors='replace').strip()[-300:]}",
            "Report this as a bug.",
        )
    return result.stdout
