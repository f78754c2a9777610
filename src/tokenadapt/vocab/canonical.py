"""One representation of a vocabulary: the bytes each token stands for, whatever the tokenizer family.

Tokenizers spell the same bytes differently: byte-level BPE writes a leading space as `Ġ` (GPT-2's byte-to-unicode
map), SentencePiece writes it as `▁` and unknown bytes as `<0xNN>`, WordPiece marks word continuations with `##`.
Matching vocabularies by their strings therefore misses most shared tokens across families (tokenkit reports
25,632 naive vs 85,699 byte-normalised matches for Gemma2/Llama3). `Vocabulary` maps every token to its canonical
bytes once, so alignment and decomposition work on what the tokens *mean*:

    >>> canonical_bytes("Ġthe", Family.BYTE_LEVEL), canonical_bytes("▁the", Family.METASPACE)
    (b' the', b' the')
    >>> canonical_bytes("<0xE2>", Family.METASPACE)
    b'\\xe2'

Special tokens have no bytes (None): they are matched by role, never embedded as text.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from tokenizers import Tokenizer as BackendTokenizer

from tokenadapt.errors import InputError
from tokenadapt.vocab.roles import roles_of_tokenizer

METASPACE = "▁"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Family(str, enum.Enum):
    """How a tokenizer spells bytes in its vocabulary strings."""

    BYTE_LEVEL = "byte-level"  # GPT-2 byte-to-unicode alphabet (GPT-2, Llama-3, Qwen, tiktoken-derived)
    METASPACE = "metaspace"  # SentencePiece style: ▁ for space, <0xNN> byte fallback (Llama-2, Mistral, Gemma)
    WORDPIECE = "wordpiece"  # BERT style: ## continues a word, anything else starts one
    RAW = "raw"  # vocabulary strings are the text itself


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {char: byte for byte, char in byte_to_unicode().items()}


def canonical_bytes(token: str, family: Family, continuation_prefix: str = "##") -> bytes:
    """The bytes a (non-special) vocabulary string stands for in text."""
    if family is Family.BYTE_LEVEL:
        table = unicode_to_byte()
        if all(char in table for char in token):
            return bytes(table[char] for char in token)
        return token.encode("utf-8")  # e.g. an added token stored as plain text
    if family is Family.METASPACE:
        if match := _BYTE_FALLBACK.match(token):
            return bytes([int(match.group(1), 16)])
        return token.replace(METASPACE, " ").encode("utf-8")
    if family is Family.WORDPIECE:
        if token.startswith(continuation_prefix) and len(token) > len(continuation_prefix):
            return token[len(continuation_prefix) :].encode("utf-8")
        return b" " + token.encode("utf-8")  # WordPiece has no spaces: an unprefixed piece starts a word
    return token.encode("utf-8")


def bytes_to_model_string(data: bytes, family: Family) -> str:
    """Inverse of `canonical_bytes` for the families whose model can read any byte string.

    Byte-level: every byte has a character. Metaspace: valid UTF-8 runs with ▁ for space; the caller handles bytes
    that are not valid UTF-8 (they go to `<0xNN>` byte-fallback tokens).
    """
    if family is Family.BYTE_LEVEL:
        table = byte_to_unicode()
        return "".join(table[b] for b in data)
    return data.decode("utf-8").replace(" ", METASPACE)


def _walk_types(component: Any) -> list[str]:
    """All `type` names in a (possibly nested Sequence) tokenizer.json component."""
    if not isinstance(component, dict):
        return []
    found = [str(component.get("type", ""))]
    for key in ("pretokenizers", "normalizers", "decoders", "processors"):
        for child in component.get(key) or []:
            found += _walk_types(child)
    return found


def _has_space_to_metaspace(normalizer: Any) -> bool:
    """Llama-2 style: a normalizer that replaces ' ' with '▁' instead of a Metaspace pre-tokenizer."""
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Replace":
        pattern = normalizer.get("pattern") or {}
        return pattern.get("String") == " " and normalizer.get("content") == METASPACE
    return any(_has_space_to_metaspace(child) for child in normalizer.get("normalizers") or [])


def detect_family(spec: dict[str, Any]) -> Family:
    """Family of a tokenizer from its tokenizer.json dictionary."""
    model = spec.get("model") or {}
    if model.get("type") == "WordPiece":
        return Family.WORDPIECE
    types = _walk_types(spec.get("pre_tokenizer")) + _walk_types(spec.get("decoder"))
    if "ByteLevel" in types:
        return Family.BYTE_LEVEL
    if "Metaspace" in types or _has_space_to_metaspace(spec.get("normalizer")):
        return Family.METASPACE
    if model.get("byte_fallback"):
        return Family.METASPACE
    return Family.RAW


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's vocabulary as canonical bytes, special-token roles and the backend model to re-tokenize with.

    `tokens[i]` is the vocabulary string of id i (None for an id no token uses), `canonical[i]` its bytes (None for
    special tokens and holes), `roles` maps a role name ("bos", "eos", "turn_end", ...) to the special ids that play it.
    `unigram_scores` are a unigram model's log-probabilities in id order (None for BPE and WordPiece).
    """

    tokens: tuple[str | None, ...]
    canonical: tuple[bytes | None, ...]
    special_ids: frozenset[int]
    roles: dict[str, tuple[int, ...]]
    family: Family
    backend: BackendTokenizer = field(repr=False, compare=False)
    unk_id: int | None = None
    continuation_prefix: str = "##"
    unigram_scores: tuple[float, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Rows an embedding matrix needs for this vocabulary (highest id + 1)."""
        return len(self.tokens)

    @cached_property
    def byte_lengths(self) -> np.ndarray:
        """[size] int64: bytes each token stands for (0 for special tokens and holes)."""
        return np.fromiter((len(data) if data else 0 for data in self.canonical), dtype=np.int64, count=self.size)

    @cached_property
    def id_by_bytes(self) -> dict[bytes, int]:
        """Canonical bytes -> id; where two ids share bytes, the lower id wins (deterministic)."""
        table: dict[bytes, int] = {}
        for token_id, data in enumerate(self.canonical):
            if data is not None and data not in table:
                table[data] = token_id
        return table

    @cached_property
    def id_by_string(self) -> dict[str, int]:
        table: dict[str, int] = {}
        for token_id, token in enumerate(self.tokens):
            if token is not None and token not in table:
                table[token] = token_id
        return table

    @cached_property
    def byte_fallback_ids(self) -> dict[int, int]:
        """Byte value -> id of its `<0xNN>` token (SentencePiece byte fallback); empty for other families."""
        table: dict[int, int] = {}
        for token_id, token in enumerate(self.tokens):
            if token is not None and token_id not in self.special_ids and (m := _BYTE_FALLBACK.match(token)):
                table.setdefault(int(m.group(1), 16), token_id)
        return table

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of this vocabulary's tokens that spell exactly `data`, with no normalisation or pre-tokenization.

        Going through the backend *model* (not the full pipeline) is what keeps SentencePiece from adding a dummy
        prefix `▁` mid-word, keeps a leading space as a word-start marker, and lets byte-level vocabularies spell
        partial UTF-8. Returns [] when the bytes cannot be spelled (e.g. no byte fallback for an unknown character).

            >>> vocab.encode_bytes(b" cats")        # GPT-2 style vocabulary
            [9246, 82]                               # "Ġcat", "s"
        """
        if not data:
            return []
        if self.family is Family.BYTE_LEVEL:
            return [t.id for t in self.backend.model.tokenize(bytes_to_model_string(data, self.family))]
        if self.family is Family.METASPACE:
            return self._encode_metaspace(data)
        if self.family is Family.WORDPIECE:
            # WordPiece cannot spell a bare continuation; a word-initial spelling is the closest it has.
            text = data.decode("utf-8", errors="replace").strip()
            ids = [t.id for t in self.backend.model.tokenize(text)] if text else []
        else:
            ids = [t.id for t in self.backend.model.tokenize(data.decode("utf-8", errors="replace"))]
        return [] if self.unk_id is not None and self.unk_id in ids else ids

    def _encode_metaspace(self, data: bytes) -> list[int]:
        ids: list[int] = []
        for run, valid in _utf8_runs(data):
            if valid:
                pieces = self.backend.model.tokenize(bytes_to_model_string(run, self.family))
                ids += [t.id for t in pieces]
            else:
                for byte in run:
                    if byte not in self.byte_fallback_ids:
                        return []
                    ids.append(self.byte_fallback_ids[byte])
        if self.unk_id is not None and self.unk_id in ids:
            return []  # an unknown piece carries no information about the token
        return ids

    def embedding_text(self, token_id: int) -> str | None:
        """The text an auxiliary embedder should read for a token, or None if it has no meaningful text.

        Partial UTF-8 and whitespace-only tokens return None: a sentence embedder maps them all to the same point,
        so their "nearest neighbours" would be noise.
        """
        data = self.canonical[token_id]
        if data is None:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return text if text.strip() else None


def _utf8_runs(data: bytes) -> list[tuple[bytes, bool]]:
    """Split bytes into maximal runs of valid UTF-8 and of undecodable bytes."""
    runs: list[tuple[bytes, bool]] = []
    start = 0
    while start < len(data):
        try:
            data[start:].decode("utf-8")
            runs.append((data[start:], True))
            break
        except UnicodeDecodeError as error:
            if error.start > 0:
                runs.append((data[start : start + error.start], True))
            bad_end = start + max(error.end, error.start + 1)
            runs.append((data[start + error.start : bad_end], False))
            start = bad_end
    return runs


MAX_UNUSED_IDS = 1 << 16


def check_id_range(used: int, size: int) -> None:
    """InputError for a vocabulary with no token, or whose ids leave most of their range unused.

    An embedding matrix needs a row for every id up to the highest; a tokenizer with a few tokens at ids in the
    billions (a corrupted or hostile file) would ask for terabytes.

    >>> check_id_range(used=2, size=4_000_000_001)
    Traceback (most recent call last):
    tokenadapt.errors.InputError: The tokenizer's ids run up to 4000000000 but only 2 of them are used...
    """
    if used == 0:
        raise InputError("The tokenizer has no tokens.", "Pass a complete tokenizer file.")
    unused = size - used
    if unused > MAX_UNUSED_IDS and unused > used:
        raise InputError(
            f"The tokenizer's ids run up to {size - 1} but only {used} of them are used, so an embedding matrix "
            f"would need {unused} empty rows.",
            "Renumber the tokens with contiguous ids (the file is likely corrupted or hand-edited).",
        )


def build_vocabulary(tokenizer: Any) -> Vocabulary:
    """Build a `Vocabulary` from a Hugging Face fast tokenizer (`PreTrainedTokenizerFast` or compatible).

    Size is the highest id + 1 over the base vocabulary and added tokens, so ids beyond the base model (added
    tokens) are covered and ids no token uses are holes.
    """
    backend: BackendTokenizer = tokenizer.backend_tokenizer
    id_to_token: dict[int, str] = {}
    for string, token_id in backend.get_vocab(with_added_tokens=True).items():
        if token_id not in id_to_token or string < id_to_token[token_id]:
            id_to_token[token_id] = string  # several strings on one id: the same one every run
    size = max(id_to_token, default=-1) + 1
    check_id_range(len(id_to_token), size)  # before to_str(), which allocates a slot per id
    spec = json.loads(backend.to_str())
    family = detect_family(spec)
    model = spec.get("model") or {}
    continuation_prefix = model.get("continuing_subword_prefix") or "##"
    added = {int(a["id"]): a for a in spec.get("added_tokens") or []}
    tokens: list[str | None] = [id_to_token.get(i) for i in range(size)]

    special_ids = {i for i, a in added.items() if a.get("special")}
    special_ids |= {i for i in getattr(tokenizer, "all_special_ids", []) if i is not None and 0 <= i < size}
    canonical: list[bytes | None] = []
    for token_id, token in enumerate(tokens):
        if token is None or token_id in special_ids:
            canonical.append(None)
        elif token_id in added:  # added (non-special) tokens are matched on their literal text
            canonical.append(token.encode("utf-8"))
        else:
            canonical.append(canonical_bytes(token, family, continuation_prefix))

    unk = getattr(tokenizer, "unk_token_id", None)
    unigram = model.get("type") == "Unigram" and isinstance(model.get("vocab"), list)
    return Vocabulary(
        tokens=tuple(tokens),
        canonical=tuple(canonical),
        special_ids=frozenset(special_ids),
        roles=roles_of_tokenizer(tokenizer, tokens, special_ids),
        family=family,
        backend=backend,
        unk_id=unk if isinstance(unk, int) else None,
        continuation_prefix=continuation_prefix,
        unigram_scores=tuple(float(entry[1]) for entry in model["vocab"]) if unigram else None,
    )
