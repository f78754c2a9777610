"""`mean`: every new token gets the mean of the old rows (the baseline every heuristic must beat)."""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec
from tokenadapt.methods.combine import candidate_mean


def estimate_mean(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    rows = candidate_mean(old, inputs.old_candidates).expand(inputs.count, -1).clone()
    return Estimate(rows, {"mean": inputs.count})


SPEC = MethodSpec(name="mean", fn=estimate_mean, needs=frozenset(), summary="mean of the old rows")
