"""Every default lives here, once. The CLI builds its flags from these dataclasses' fields and their `help`.

>>> TransplantOptions().top_k, TransplantOptions(method="local").method
(3, 'local')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tokenadapt.errors import InputError


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TransplantOptions:
    """How to transplant. Defaults for top_k, temperature, global_weight and threshold are the TokenAdapt code's."""

    method: str = _opt("hybrid", "initialisation method for new tokens (see `tokenadapt list`)")
    embedder: str = _opt("minilm", "auxiliary embedder: a built-in name, a local directory or a Hub id")
    top_k: int = _opt(3, "neighbours per new token for the global estimate")
    temperature: float = _opt(0.3, "softmax temperature for local and global weights")
    global_weight: float = _opt(0.3, "share of the global estimate in hybrid (0 = local only, 1 = global only)")
    threshold: float = _opt(0.0, "minimum cosine similarity for a neighbour to count")
    match: str = _opt("bytes", "shared-token matching: 'bytes' (canonical) or 'string' (the paper code's)")
    pad_to_multiple_of: int = _opt(1, "pad the embedding rows to a multiple of this (1 = no padding)")
    seed: int = _opt(0, "random seed (used by the 'random' method)")
    embed_batch_size: int = _opt(512, "auxiliary-embedder batch size")
    overwrite: bool = _opt(False, "replace OUT if it exists")
    verify: bool = _opt(True, "reload and check the output before moving it into place")

    def validated(self) -> TransplantOptions:
        """Self, after checking every value; raises InputError naming the bad option and its valid range."""
        from tokenadapt.methods import method_names

        checks: list[tuple[bool, str]] = [
            (self.method in method_names(), f"--method must be one of {', '.join(method_names())}"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.temperature > 0, "--temperature must be greater than 0"),
            (0.0 <= self.global_weight <= 1.0, "--global-weight must be between 0 and 1"),
            (-1.0 <= self.threshold <= 1.0, "--threshold is a cosine similarity, between -1 and 1"),
            (self.match in ("bytes", "string"), "--match must be 'bytes' or 'string'"),
            (self.pad_to_multiple_of >= 1, "--pad-to-multiple-of must be at least 1"),
            (self.embed_batch_size >= 1, "--embed-batch-size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"Invalid option: {message}.", "Fix the value and run again.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalOptions:
    """How to score a model on a text."""

    context: int = _opt(512, "tokens of context per scoring window")
    stride: int = _opt(512, "tokens scored per window (at most context - 1 are scored with full context)")
    bos: str = _opt("auto", "prepend bos: 'auto' (if the tokenizer adds it), 'always' or 'never'")
    max_bytes: int = _opt(20000, "score only the first N UTF-8 bytes of each text (0 = all)")

    def validated(self) -> EvalOptions:
        checks: list[tuple[bool, str]] = [
            (self.context >= 2, "--context must be at least 2"),
            (self.stride >= 1, "--stride must be at least 1"),
            (self.bos in ("auto", "always", "never"), "--bos must be auto, always or never"),
            (self.max_bytes >= 0, "--max-bytes must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"Invalid option: {message}.", "Fix the value and run again.")
        return self


@dataclass(frozen=True)
class TrainTokenizerOptions:
    """How to train a tokenizer. The supertoken defaults follow the TokenAdapt SuperTokenizer code."""

    mode: str = _opt("bpe", "bpe (regex pre-tokenized control), supertoken (the paper's) or superbpe (two-stage)")
    vocab_size: int = _opt(32000, "tokens in the vocabulary, special tokens included")
    min_frequency: int = _opt(2, "a pair must occur this often to be merged")
    max_token_length: int = _opt(30, "longest token in characters (supertoken mode; 0 = no limit)")
    spans: str = _opt("words", "supertoken: cut training spans at whole words, or at 4-23 'chars' (the paper's)")
    split: str = _opt("dev", "split of built-in texts to train on: dev (keeps test unseen for evaluation), test or all")
    max_bytes: int = _opt(0, "train on at most this many UTF-8 bytes of text (0 = all of it)")
    held_out: float = _opt(0.05, "share of the text's chunks held out to measure compression on unseen text")
    transition: float = _opt(0.9, "superbpe: share of the vocabulary learned by ordinary BPE before stage 2")
    max_words: int = _opt(3, "superbpe, and supertoken with --spans words: most words in one span")
    seed: int = _opt(0, "random seed for the supertoken span cuts")
    bos_token: str = _opt("<s>", "beginning-of-sequence token ('' for none)")
    eos_token: str = _opt("</s>", "end-of-sequence token ('' for none)")
    pad_token: str = _opt("<pad>", "padding token ('' for none)")
    unk_token: str = _opt("<unk>", "unknown token ('' for none; byte-level tokenizers never emit it)")
    overwrite: bool = _opt(False, "replace OUT if it exists")

    @property
    def special_tokens(self) -> dict[str, str]:
        """Role -> spelling of each special token asked for, in id order (bos gets id 0)."""
        roles = {"bos": self.bos_token, "eos": self.eos_token, "pad": self.pad_token, "unk": self.unk_token}
        return {role: token for role, token in roles.items() if token}

    def validated(self) -> TrainTokenizerOptions:
        from tokenadapt.training.modes import mode_names

        specials = list(self.special_tokens.values())
        smallest = 256 + len(specials)
        checks: list[tuple[bool, str]] = [
            (self.mode in mode_names(), f"--mode must be one of {', '.join(mode_names())}"),
            (
                self.vocab_size > smallest,
                f"--vocab-size must be more than the 256 bytes plus {len(specials)} special tokens ({smallest})",
            ),
            (self.min_frequency >= 1, "--min-frequency must be at least 1"),
            (self.max_token_length >= 0, "--max-token-length must be 0 (no limit) or more"),
            (self.split in ("dev", "test", "all"), "--split must be dev, test or all"),
            (self.max_bytes >= 0, "--max-bytes must be 0 (no limit) or more"),
            (self.spans in ("words", "chars"), "--spans must be words or chars"),
            (0.0 <= self.held_out < 0.5, "--held-out must be at least 0 and below 0.5"),
            (0.0 < self.transition < 1.0, "--transition must be between 0 and 1 (exclusive)"),
            (
                self.mode != "superbpe" or int(self.transition * self.vocab_size) > smallest,
                f"--transition x --vocab-size must leave stage 1 more than {smallest} tokens",
            ),
            (self.max_words >= 1, "--max-words must be at least 1"),
            (len(set(specials)) == len(specials), "the special tokens must be different from each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"Invalid option: {message}.", "Fix the value and run again.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
