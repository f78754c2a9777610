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
