"""`global`: TokenAdapt's global estimate, the top-k semantically nearest old tokens.

Each new token is embedded with the auxiliary embedder, its k nearest old tokens are found (cosine, exact), and

    w_j  = softmax_j(sim_j / T) over the neighbours with sim_j >= threshold
    e(t) = sum_j w_j E_old[n_j]

Worked example, T = 0.3, k = 2: similarities 0.9 and 0.6 -> w = softmax(3.0, 2.0) = (0.731, 0.269).
Tokens with no text to embed, or no neighbour above the threshold, fall back to the mean of the old rows.
"""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec
from tokenadapt.methods.combine import masked_softmax, sparse_estimate


def global_weights(inputs: MethodInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(neighbour indices [U, k], weights [U, k], has_neighbour [U] bool)."""
    assert inputs.neighbors is not None and inputs.aux_new_ok is not None
    sims = inputs.neighbors.similarities
    valid = torch.isfinite(sims) & (sims >= inputs.options.threshold) & inputs.aux_new_ok[:, None]
    weights = masked_softmax(torch.nan_to_num(sims, neginf=0.0) / inputs.options.temperature, valid)
    return inputs.neighbors.indices, weights, valid.any(dim=1)


def estimate_global(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    indices, weights, found = global_weights(inputs)
    return sparse_estimate(old, inputs, indices, weights, found, "global")


SPEC = MethodSpec(
    name="global",
    fn=estimate_global,
    needs=frozenset({"aux", "neighbors"}),
    summary="TokenAdapt global: softmax over the top-k nearest old tokens in auxiliary space",
)
