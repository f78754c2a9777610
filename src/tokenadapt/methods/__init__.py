"""Registry of embedding-initialisation methods, keyed by the name the CLI uses (`--method NAME`).

Each method lives in its own module as a pure function on tensors; see `methods.base` for the contract.

    >>> get_method("hybrid").needs
    frozenset({'decomposition', 'aux', 'neighbors'})
"""

from __future__ import annotations

from tokenadapt.errors import InputError
from tokenadapt.methods import (
    align,
    focus,
    global_neighbors,
    hybrid,
    local,
    mean,
    omp,
    random_normal,
    subword_mean,
)
from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec, Need

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        hybrid.SPEC,
        local.SPEC,
        global_neighbors.SPEC,
        subword_mean.SPEC,
        mean.SPEC,
        random_normal.SPEC,
        align.SPEC,
        focus.SPEC,
        omp.SPEC,
        omp.HYBRID_SPEC,
    )
}


def required_needs(spec: MethodSpec, fallback: str) -> frozenset[Need]:
    """What the pipeline must compute for `spec`: its own needs plus, if it falls back, the fallback method's.

    >>> sorted(required_needs(get_method("align"), "subword-mean"))
    ['decomposition', 'text']
    """
    needs = set(spec.needs)
    if spec.uses_fallback:
        needs |= get_method(fallback).needs
    return frozenset(needs)


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise InputError(f"Unknown method '{name}'.", f"Choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "Estimate", "MethodInputs", "MethodSpec", "Need", "get_method", "method_names", "required_needs"]
