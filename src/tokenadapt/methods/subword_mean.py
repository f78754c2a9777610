"""`subword-mean`: the ReTok-style baseline, the plain mean of the token's old-vocabulary pieces.

>>> # " transplant" -> " trans", "plant":  e = (E[" trans"] + E["plant"]) / 2
"""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec
from tokenadapt.methods.combine import sparse_estimate


def estimate_subword_mean(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    assert inputs.decomposition is not None
    mask = inputs.decomposition.mask
    weights = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return sparse_estimate(old, inputs, inputs.decomposition.pieces, weights, mask.any(dim=1), "subword-mean")


SPEC = MethodSpec(
    name="subword-mean",
    fn=estimate_subword_mean,
    needs=frozenset({"decomposition"}),
    summary="ReTok-style baseline: plain mean of the old pieces",
)
