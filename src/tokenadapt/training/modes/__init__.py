"""Tokenizer training modes, one module each, keyed by the name `--mode` takes."""

from __future__ import annotations

from tokenadapt.errors import InputError
from tokenadapt.training.modes import bpe, superbpe, supertoken
from tokenadapt.training.modes.base import ModeSpec

MODES: dict[str, ModeSpec] = {spec.name: spec for spec in (bpe.SPEC, supertoken.SPEC, superbpe.SPEC)}


def mode_names() -> list[str]:
    return list(MODES)


def get_mode(name: str) -> ModeSpec:
    if name not in MODES:
        raise InputError(f"Unknown training mode {name!r}.", f"Pass one of: {', '.join(MODES)}.")
    return MODES[name]
