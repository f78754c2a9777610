"""Registry of embedding-initialisation methods, keyed by the name the CLI uses (`--method NAME`).

Each method lives in its own module as a pure function on tensors; see `methods.base` for the contract.

    >>> get_method("hybrid").needs
    frozenset({'decomposition', 'aux', 'neighbors'})
"""

from __future__ import annotations

from tokenadapt.errors import InputError
from tokenadapt.methods import global_neighbors, hybrid, local, mean, random_normal, subword_mean
from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        hybrid.SPEC,
        local.SPEC,
        global_neighbors.SPEC,
        subword_mean.SPEC,
        mean.SPEC,
        random_normal.SPEC,
    )
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise InputError(f"Unknown method '{name}'.", f"Choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "Estimate", "MethodInputs", "MethodSpec", "get_method", "method_names"]
