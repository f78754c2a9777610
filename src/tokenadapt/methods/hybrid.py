"""`hybrid` (default): TokenAdapt's mix of the local and global estimates.

    e(t) = (1 - w) e_local(t) + w e_global(t),   w = --global-weight (0.3)

A token with only one estimate takes that one whole; a token with neither takes the mean of the old rows. Both
estimates are sparse combinations of old rows, so the hybrid is one combination over their concatenated indices.
"""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec
from tokenadapt.methods.combine import candidate_mean, combine_rows, fill_missing
from tokenadapt.methods.global_neighbors import global_weights
from tokenadapt.methods.local import local_weights


def hybrid_weights(inputs: MethodInputs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(indices [U, L + k], weights [U, L + k], masks of which rows took which path)."""
    local_idx, local_w, spelled = local_weights(inputs)
    global_idx, global_w, found = global_weights(inputs)
    share = inputs.options.global_weight
    both = spelled & found
    local_scale = torch.where(both, 1.0 - share, 1.0)[:, None]
    global_scale = torch.where(both, share, 1.0)[:, None]
    indices = torch.cat([local_idx, global_idx], dim=1)
    weights = torch.cat([local_w * local_scale, global_w * global_scale], dim=1)
    paths = {
        "hybrid": both,
        "local-only": spelled & ~found,
        "global-only": found & ~spelled,
        "fallback-mean": ~(spelled | found),
    }
    return indices, weights, paths


def estimate_hybrid(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    indices, weights, paths = hybrid_weights(inputs)
    rows = combine_rows(old, indices, weights)
    rows = fill_missing(rows, paths["fallback-mean"], candidate_mean(old, inputs.old_candidates))
    return Estimate(rows, {name: int(mask.sum()) for name, mask in paths.items()})


SPEC = MethodSpec(
    name="hybrid",
    fn=estimate_hybrid,
    needs=frozenset({"decomposition", "aux", "neighbors"}),
    summary="TokenAdapt hybrid (default): (1 - w) local + w global",
)
