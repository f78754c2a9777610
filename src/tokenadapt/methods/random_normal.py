"""`random`: samples from a normal distribution with the old rows' mean and covariance.

transformers' `resize_token_embeddings(mean_resizing=True)` draws from the same family but shrinks the covariance by
1e-9, which makes it the `mean` method in practice; here the full covariance is used, so `random` shows what a
token that is "typical but unrelated" costs. Seeded: the same --seed gives the same rows.
"""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec


def estimate_random(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    rows = old[inputs.old_candidates] if bool(inputs.old_candidates.any()) else old
    rows = rows.to(torch.float64)
    mean = rows.mean(dim=0)
    centered = rows - mean
    covariance = centered.T @ centered / max(rows.shape[0] - 1, 1)
    jitter = 1e-6 * covariance.diagonal().mean().clamp(min=1e-12)
    factor, info = torch.linalg.cholesky_ex(covariance + jitter * torch.eye(covariance.shape[0], dtype=torch.float64))
    generator = torch.Generator().manual_seed(inputs.options.seed)
    noise = torch.randn((inputs.count, old.shape[1]), generator=generator, dtype=torch.float64)
    positive_definite = int(info) == 0  # if not, even with jitter, fall back to a per-dimension std
    sampled = mean + noise @ factor.T if positive_definite else mean + noise * centered.std(dim=0)
    return Estimate(sampled.to(torch.float32), {"random": inputs.count})


SPEC = MethodSpec(
    name="random",
    fn=estimate_random,
    needs=frozenset(),
    summary="normal with the old rows' mean and covariance",
    column_separable=False,  # the covariance couples every column
)
