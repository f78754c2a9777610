"""`omp` and `omp-hybrid`: orthogonal matching pursuit with a donor model (mergekit-tokensurgeon's method).

A donor is a model that already uses the new tokenizer. In the donor's embedding space, each new token t is
approximated by a sparse combination of anchors, the tokens both vocabularies share:

    x_t ~= sum_{s in S_t} gamma_ts a_s,     |S_t| = k  (--omp-k, 4; mergekit uses 64)

found greedily (OMP: add the anchor most correlated with the residual, re-fit all coefficients by least squares,
repeat k times). The same coefficients then combine the *base* model's rows of those anchors:

    e(t) = sum_s gamma_ts E_old[anchor s]

Worked example: anchors a_1 = (1, 0), a_2 = (0, 1) in a 2-d donor space and x_t = (2, 3): OMP picks a_2 (|3| > |2|),
then a_1, and gamma = (3, 2) for (a_2, a_1), so e(t) = 3 E_old[a_2] + 2 E_old[a_1].

The relative residual ||x_t - sum gamma a|| / ||x_t|| says how well the donor space explains t; `omp-hybrid` uses
OMP where it is at most `--omp-max-residual` and the hybrid estimate elsewhere.

Batched in torch (`batch_omp`): every token of a batch adds one atom per step, and the least squares are kept
solved by Gram-Schmidt (a batched triangular factor grown one row per step, solved once at the end), never a
per-token loop. Exact OMP correlates every residual with every anchor at every step (U k A d multiply-adds: ~250
TFLOP for 112k new tokens, 39k anchors and d = 896, hours on two CPU cores), so by default each token first screens
the `--omp-candidates` (128) anchors most correlated with it and runs exact OMP among those, on their Gram matrix;
`--omp-candidates 0` runs exact OMP over all anchors (for a GPU, or small vocabularies).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec, SparseCombination
from tokenadapt.methods.combine import sparse_matrix, sparse_rows, with_fallback


def batch_omp(
    targets: torch.Tensor,
    atoms: torch.Tensor,
    k: int,
    candidates: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    tol: float = 1e-6,
    selection: str = "inner",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse codes of `targets` [U, d] over `atoms` [A, d]: (indices [U, k'], coefficients [U, k'], residual [U]).

    k' = min(k, A). `targets[u] ~= sum_j coefficients[u, j] * atoms[indices[u, j]]`; `residual[u]` is the relative
    error ||x - approx|| / ||x|| (0 for a zero target). Each step adds the atom with the largest absolute inner
    product with the residual (`selection="inner"`, as mergekit-tokensurgeon: long atoms, usually well-trained
    tokens, are preferred) or the largest absolute cosine (`selection="cosine"`, textbook OMP on unit atoms).
    A token already represented exactly (residual correlation below `tol`), or an atom that adds no new direction,
    leaves its remaining slots with coefficient 0. `candidates` > 0 restricts each token to that many atoms, the
    most correlated with it, and runs exact OMP among them on their Gram matrix.

        >>> idx, coef, res = batch_omp(torch.tensor([[2.0, 3.0]]), torch.eye(2), k=2)
        >>> idx.tolist(), coef.tolist(), res.tolist()
        ([[1, 0]], [[3.0, 2.0]], [0.0])
    """
    targets = targets.to(torch.float32)
    norms = atoms.to(torch.float32).norm(dim=1).clamp(min=1e-12)
    unit = atoms.to(torch.float32) / norms[:, None]
    k = min(k, unit.shape[0])
    if selection not in ("inner", "cosine"):
        raise ValueError(f"selection must be 'inner' or 'cosine', not {selection!r}")
    scale = norms if selection == "inner" else torch.ones_like(norms)  # |<r, a>| = |<r, u>| * ||a||
    screened = 0 < candidates < unit.shape[0]
    indices = torch.zeros((targets.shape[0], k), dtype=torch.long)
    coefficients = torch.zeros((targets.shape[0], k))
    residual = torch.zeros(targets.shape[0])
    starts = range(0, targets.shape[0], batch_size)
    for start in tqdm(starts, desc="omp", unit="batch", disable=not progress, mininterval=2.0):
        x = targets[start : start + batch_size]
        correlations = x @ unit.T  # [B, A]
        if screened:
            pool = torch.topk(correlations.abs() * scale, candidates, dim=1).indices  # [B, M] atom ids
            pool_atoms = unit[pool]
            gram = torch.bmm(pool_atoms, pool_atoms.transpose(1, 2))  # [B, M, M]
            del pool_atoms
            c0 = torch.gather(correlations, 1, pool)
            slots, lower, z = _pursue(c0, k, x.norm(dim=1), tol, gram=gram, scale=scale[pool])
            chosen = torch.gather(pool, 1, slots)
        else:
            chosen, lower, z = _pursue(
                correlations, k, x.norm(dim=1), tol, unit=unit, scale=scale.expand_as(correlations)
            )
        gamma = torch.linalg.solve_triangular(lower.transpose(1, 2), z.unsqueeze(2), upper=True).squeeze(2)
        indices[start : start + batch_size] = chosen
        coefficients[start : start + batch_size] = gamma / norms[chosen]
        energy = (x * x).sum(dim=1)
        explained = (z * z).sum(dim=1)
        residual[start : start + batch_size] = ((energy - explained).clamp(min=0) / energy.clamp(min=1e-24)).sqrt()
    return indices, coefficients, residual


def _pursue(
    c0: torch.Tensor,
    k: int,
    x_norm: torch.Tensor,
    tol: float,
    gram: torch.Tensor | None = None,
    unit: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k OMP steps for a batch, by Gram-Schmidt: returns (picked [B, k], L [B, k, k], z [B, k]).

    `c0` [B, n]: correlations of each target with its n unit atoms (its own candidates, or all atoms). Step t picks
    the atom j most correlated with the residual, writes it as a_j = sum_{s<t} w_s q_s + d q_t over the orthonormal
    directions q found so far (row t of the lower-triangular L is (w, d)), and the residual loses z_t q_t with
    z_t = <x, q_t>. So x ~= z^T Q = gamma^T L Q with L^T gamma = z, and ||x||^2 - ||r||^2 = ||z||^2.

    Correlations with the new direction come from `gram` [B, n, n] (screened: h_t = (G[j] - w H) / d, where H
    holds earlier directions' correlations, so w is a look-up) or from the atoms `unit` [n, dim] (exact: one
    matrix product per step, with the directions Q kept in the atoms' space). `scale` [B, n] weighs the selection
    (the atoms' norms select by inner product instead of cosine). An atom that adds no direction
    (d^2 <= tol), or a target already explained, makes an inert slot: w = 0, d = 1, z = 0."""
    batch, n = c0.shape
    rows = torch.arange(batch)
    picked = torch.zeros((batch, k), dtype=torch.long)
    lower = torch.zeros((batch, k, k))
    z = torch.zeros((batch, k))
    basis = torch.zeros((batch, k, n if gram is not None else int(unit.shape[1])))  # type: ignore[union-attr]
    taken = torch.zeros((batch, n), dtype=torch.bool)
    alpha = c0.clone()
    active = x_norm > 0
    for t in range(k):
        score = alpha.abs() if scale is None else alpha.abs() * scale
        j = score.masked_fill(taken, -1.0).argmax(dim=1)
        taken[rows, j] = True
        picked[:, t] = j
        if gram is not None:
            w = basis[rows, :t, j]  # [B, t]: correlations of atom j with the earlier directions
            new = gram[rows, j]  # [B, n]
        else:
            assert unit is not None
            new = unit[j]  # [B, dim]
            w = torch.bmm(basis[:, :t], new.unsqueeze(2)).squeeze(2)
        pivot = 1.0 - (w * w).sum(dim=1)
        ok = active & (pivot > tol)
        d = torch.where(ok, pivot.clamp(min=tol).sqrt(), torch.ones_like(pivot))
        w = w * ok[:, None]
        lower[:, t, :t] = w
        lower[:, t, t] = d
        z[:, t] = torch.where(ok, (c0[rows, j] - (w * z[:, :t]).sum(dim=1)) / d, torch.zeros_like(d))
        direction = (new - torch.bmm(w.unsqueeze(1), basis[:, :t]).squeeze(1)) / d[:, None] * ok[:, None]
        basis[:, t] = direction
        alpha -= z[:, t : t + 1] * (direction if gram is not None else direction @ unit.T)  # type: ignore[union-attr]
        active = active & (alpha.abs().max(dim=1).values > tol * x_norm)
    return picked, lower, z


def omp_codes(
    donor_new: torch.Tensor,
    donor_anchors: torch.Tensor,
    anchor_old_ids: torch.Tensor,
    found: torch.Tensor,
    old_rows: int,
    k: int,
    candidates: int,
    progress: bool = False,
    selection: str = "inner",
) -> SparseCombination:
    """OMP codes of the U new tokens (donor rows `donor_new` [U, d_donor], `found` [U] where a donor row exists)
    over the anchors (`donor_anchors` [A, d_donor], whose base-model rows are `anchor_old_ids` [A]).

    Returns the codes as a sparse [U, old_rows] matrix over old ids; `score` is the relative residual (inf where
    no donor row exists)."""
    picked = found.nonzero().squeeze(1)
    residual = torch.full((found.shape[0],), float("inf"))
    if picked.numel() == 0 or donor_anchors.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return SparseCombination(
            sparse_matrix(empty, empty, torch.zeros(0), (found.shape[0], old_rows)), torch.zeros_like(found), residual
        )
    indices, coefficients, res = batch_omp(
        donor_new[picked], donor_anchors, k, candidates, progress=progress, selection=selection
    )
    residual[picked] = res
    rows = picked[:, None].expand_as(indices)
    keep = coefficients != 0
    matrix = sparse_matrix(rows[keep], anchor_old_ids[indices[keep]], coefficients[keep], (found.shape[0], old_rows))
    return SparseCombination(matrix=matrix, found=found.clone(), score=residual)


def estimate_omp(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    assert inputs.omp is not None
    return with_fallback(old, inputs, sparse_rows(inputs.omp.matrix, old), inputs.omp.found, "omp")


def estimate_omp_hybrid(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    """OMP where its relative residual in donor space is at most --omp-max-residual, hybrid elsewhere."""
    from tokenadapt.methods.hybrid import estimate_hybrid

    assert inputs.omp is not None
    good = inputs.omp.found & (inputs.omp.score <= inputs.options.omp_max_residual)
    hybrid = estimate_hybrid(old, inputs)
    rows = torch.where(good[:, None], sparse_rows(inputs.omp.matrix, old), hybrid.rows)
    return Estimate(rows, {"omp": int(good.sum()), "hybrid": inputs.count - int(good.sum())})


SPEC = MethodSpec(
    name="omp",
    fn=estimate_omp,
    needs=frozenset({"donor"}),
    summary="mergekit-style OMP: sparse codes over shared tokens found in a --donor model's embedding space",
    uses_fallback=True,
)

HYBRID_SPEC = MethodSpec(
    name="omp-hybrid",
    fn=estimate_omp_hybrid,
    needs=frozenset({"donor", "decomposition", "aux", "neighbors"}),
    summary="omp where the donor space explains the token well (--omp-max-residual), hybrid elsewhere",
)
