"""`local`: TokenAdapt's local estimate, a weighted mean of the token's old-vocabulary pieces.

For a new token t spelled by old pieces s_1..s_n (see `vocab.decompose`), with auxiliary embeddings phi:

    w_sem_i  = softmax_i(cos(phi(t), phi(s_i)))
    len_i    = bytes(s_i) / bytes(t)
    w_i      = softmax_i(((w_sem_i + len_i) / 2) / T)
    e(t)     = sum_i w_i E_old[s_i]

Worked example, T = 0.3: pieces " trans" (6 bytes) and "plant" (5 bytes) of " transplant" (11 bytes), with
cosines 0.6 and 0.5 -> w_sem = (0.525, 0.475), len = (0.545, 0.455), mean (0.535, 0.465) -> w = (0.559, 0.441).
Pieces without text (partial UTF-8, whitespace) get cosine 0. Tokens the old vocabulary cannot spell fall back to
the mean of the old rows.
"""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec
from tokenadapt.methods.combine import masked_softmax, sparse_estimate


def piece_cosines(inputs: MethodInputs, chunk_size: int = 1 << 16) -> torch.Tensor:
    """[U, L] cosine between each new token and each of its pieces in auxiliary space (0 where undefined).

    Computed over the real (token, piece) pairs only, in chunks, so padding to the longest decomposition costs
    nothing.
    """
    assert inputs.decomposition is not None and inputs.aux_new is not None and inputs.aux_old is not None
    assert inputs.aux_new_ok is not None and inputs.aux_old_ok is not None
    pieces, mask = inputs.decomposition.pieces, inputs.decomposition.mask
    defined = mask & inputs.aux_new_ok[:, None] & inputs.aux_old_ok[pieces]
    rows, slots = defined.nonzero(as_tuple=True)
    values = torch.empty(rows.numel(), dtype=torch.float32)
    for start in range(0, rows.numel(), chunk_size):
        row, slot = rows[start : start + chunk_size], slots[start : start + chunk_size]
        values[start : start + chunk_size] = (inputs.aux_new[row] * inputs.aux_old[pieces[row, slot]]).sum(dim=1)
    cos = torch.zeros(pieces.shape, dtype=torch.float32)
    cos[rows, slots] = values
    return cos


def local_weights(inputs: MethodInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(piece indices [U, L], weights [U, L] summing to 1 per spelled row, spelled [U] bool)."""
    assert inputs.decomposition is not None
    pieces, mask = inputs.decomposition.pieces, inputs.decomposition.mask
    w_sem = masked_softmax(piece_cosines(inputs), mask)
    length_share = inputs.old_byte_lengths[pieces] / inputs.new_byte_lengths.clamp(min=1)[:, None]
    weights = masked_softmax((w_sem + length_share) / 2 / inputs.options.temperature, mask)
    return pieces, weights, mask.any(dim=1)


def estimate_local(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    pieces, weights, spelled = local_weights(inputs)
    return sparse_estimate(old, inputs, pieces, weights, spelled, "local")


SPEC = MethodSpec(
    name="local",
    fn=estimate_local,
    needs=frozenset({"decomposition", "aux"}),
    summary="TokenAdapt local: old pieces weighted by auxiliary similarity and length",
)
