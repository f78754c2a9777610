"""The text a tokenizer learns from, streamed in chunks, with a held-out share it never sees.

Built-in texts contribute one split (by default "dev", so their "test" split stays unseen for evaluation); a
local file or directory contributes all of its `*.txt`/`*.md`/`*.py` text, read one file at a time. Every
document is cut into chunks of at most `CHUNK_CHARS` characters at line ends, and a chunk is held out when the
hash of its id falls below `held_out`: the choice does not depend on the order of the texts or on the other
chunks, so the same text always holds out the same chunks.

    text = TrainingText(["wiki-en", "notes/"], split="dev", held_out=0.05, max_bytes=0)   # 0: no byte cap
    sources = text.scan()                       # sha256 and byte counts; raises InputError on unreadable text
    for chunk in text.chunks(held_out=False):   # what the trainer sees
        ...
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenadapt.errors import InputError
from tokenadapt.zoo.texts import BUILTIN_TEXTS, LOCAL_SUFFIXES, load_text, local_text_files, read_utf8_file

CHUNK_CHARS = 1 << 14


@dataclass(frozen=True)
class Chunk:
    """A piece of one document (`id` is `text name/document id#k`)."""

    id: str
    text: str

    @property
    def held_out(self) -> float:
        """A number in [0, 1) fixed by the chunk id: the chunk is held out when it is below the share asked."""
        return int(hashlib.sha256(f"tokenadapt-heldout:{self.id}".encode()).hexdigest()[:8], 16) / 2**32


def cut_document(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """`text` in consecutive pieces of at most `limit` characters, cut after a newline where there is one.

    >>> cut_document("ab\\ncd\\nef", limit=5)
    ['ab\\n', 'cd\\n', 'ef']
    """
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + limit)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline >= start else end
        pieces.append(text[start:end])
        start = end
    return pieces


@dataclass
class TrainingText:
    """One or more texts (built-in names or local paths) read as a stream of chunks."""

    specs: Sequence[str | Path]
    split: str = "dev"
    held_out: float = 0.05
    max_bytes: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.specs:
            raise InputError("No training text was given.", "Pass at least one --text NAME|PATH.")
        for spec in self.specs:
            if not (isinstance(spec, str) and spec in BUILTIN_TEXTS) and not Path(spec).expanduser().exists():
                raise InputError(
                    f"{spec!s} is neither a built-in text nor an existing file or directory.",
                    f"Pass a built-in name ({', '.join(BUILTIN_TEXTS)}) or a path to UTF-8 text.",
                )

    @property
    def local_paths(self) -> list[Path]:
        """The texts given as paths (an output must never be written over them)."""
        return [Path(s).expanduser() for s in self.specs if not (isinstance(s, str) and s in BUILTIN_TEXTS)]

    def scan(self) -> list[dict[str, Any]]:
        """Read everything once: per text its origin, sha256 and bytes trained on and held out.

        Raises InputError when a file is unreadable or not UTF-8, or when there is no text to train on.
        """
        self.sources = []
        seen = 0
        has_text = False
        for spec in self.specs:
            digest = hashlib.sha256()
            counts = {"train_bytes": 0, "held_out_bytes": 0}
            origin: dict[str, Any] = {}
            for chunk, meta in self._chunks_of(spec):
                if self.max_bytes and seen >= self.max_bytes:
                    break
                origin = meta
                data = chunk.text.encode("utf-8")
                digest.update(data)
                is_held_out = chunk.held_out < self.held_out
                counts["held_out_bytes" if is_held_out else "train_bytes"] += len(data)
                seen += 0 if is_held_out else len(data)
                has_text = has_text or (not is_held_out and not chunk.text.isspace())
            self.sources.append({"text": str(spec), **origin, "sha256": digest.hexdigest(), **counts})
        if not has_text:
            raise InputError(
                "The training text is empty or only whitespace (or every chunk of it was held out).",
                "Pass more text, or a smaller --held-out share.",
            )
        return self.sources

    def chunks(self, held_out: bool = False) -> Iterator[Chunk]:
        """The training chunks (`held_out=False`) or the held-out ones, in a fixed order.

        With `max_bytes`, the stream stops at the chunk that reaches that many UTF-8 bytes of training text.
        """
        seen = 0
        for spec in self.specs:
            for chunk, _ in self._chunks_of(spec):
                if self.max_bytes and seen >= self.max_bytes:
                    return
                is_held_out = chunk.held_out < self.held_out
                if not is_held_out:
                    seen += len(chunk.text.encode("utf-8"))
                if is_held_out == held_out:
                    yield chunk

    def _chunks_of(self, spec: str | Path) -> Iterator[tuple[Chunk, dict[str, Any]]]:
        if isinstance(spec, str) and spec in BUILTIN_TEXTS:
            corpus = load_text(spec, self.split)
            builtin: dict[str, Any] = {"origin": "builtin", "split": corpus.split, **_package_of(corpus.source)}
            for doc_id, document in zip(corpus.doc_ids, corpus.documents, strict=True):
                for k, piece in enumerate(cut_document(document)):
                    yield Chunk(f"{spec}/{doc_id}#{k}", piece), builtin
            return
        root = Path(spec).expanduser()
        files = local_text_files(root) if root.is_dir() else [root]
        if root.is_dir() and not files:
            raise InputError(
                f"{root} holds no {'/'.join('*' + s for s in LOCAL_SUFFIXES)} file.",
                "Pass a directory that contains text files with those suffixes, or a single file.",
            )
        meta: dict[str, Any] = {"origin": "local", "path": str(root.resolve()), "files": len(files)}
        for path in files:
            name = path.relative_to(root).as_posix() if root.is_dir() else path.name
            for k, piece in enumerate(cut_document(read_utf8_file(path))):
                yield Chunk(f"{name}#{k}", piece), meta


def _package_of(source: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in source.items() if k in ("package", "version", "source_sha256", "text_sha256")}
