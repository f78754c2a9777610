"""`focus`: FOCUS (Dobler and de Melo, 2023), sparse combinations of shared tokens by auxiliary similarity.

A small fastText model is trained on `--text` tokenized with the *new* tokenizer, so every token the text shows often
enough (`--focus-min-count`) gets a vector, shared tokens and new tokens alike. A new token t is then a sparse
combination of the shared tokens S (those both vocabularies have, whose rows are copied):

    w    = sparsemax_s(cos(v_t, v_s))      over the shared tokens s with a vector
    e(t) = sum_s w_s E_old[s]

sparsemax (Martins and Astudillo, 2016) is the Euclidean projection onto the simplex: it keeps only the shared
tokens whose similarity is within a margin of the best ones and gives the rest exactly 0: w_s = max(cos_s - tau, 0)
with tau chosen so the weights sum to 1. Worked example: similarities (0.9, 0.5, 0.1) -> support {0.9, 0.5} (the
k-th largest stays while 1 + k z_k > z_1 + ... + z_k: 1.9 > 0.9, 2.0 > 1.4, but 1.3 < 1.5), tau = (1.4 - 1) / 2 = 0.2
-> w = (0.7, 0.3, 0).

Tokens without a vector (the text shows them fewer than `--focus-min-count` times; FOCUS initialises them randomly)
take the `--fallback` estimate and are counted as "fallback-<name>". The similarity matrix is computed in chunks of
new tokens (`chunk_size` x shared at a time), never new x shared at once.
"""

from __future__ import annotations

import torch

from tokenadapt.methods.base import Estimate, MethodInputs, MethodSpec, SparseCombination
from tokenadapt.methods.combine import sparse_matrix, sparse_rows, with_fallback


def sparsemax(scores: torch.Tensor, top: int = 256) -> torch.Tensor:
    """Row-wise sparsemax of `scores` [B, n]: the closest point of the probability simplex, usually sparse.

    Computed on each row's `top` largest scores; a row whose support might reach past them is redone on a full
    sort, so the result is exact.

        >>> sparsemax(torch.tensor([[0.9, 0.5, 0.1]]))
        tensor([[0.7000, 0.3000, 0.0000]])
    """
    if scores.shape[1] == 0:
        return scores.clone()
    top = min(top, scores.shape[1])
    values = torch.topk(scores, top, dim=1).values
    tau, support = _threshold(values)
    full = (support == top) & (top < scores.shape[1])  # the support may continue past the top scores
    if bool(full.any()):
        tau[full], _ = _threshold(torch.sort(scores[full], dim=1, descending=True).values)
    return (scores - tau[:, None]).clamp(min=0)


def _threshold(sorted_desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau [B], support size [B]) of sparsemax from scores sorted in descending order."""
    ranks = torch.arange(1, sorted_desc.shape[1] + 1, dtype=sorted_desc.dtype)
    cumulative = sorted_desc.cumsum(dim=1)
    in_support = 1 + ranks * sorted_desc > cumulative
    support = in_support.sum(dim=1)  # the condition holds for a prefix of the ranks
    tau = (cumulative.gather(1, (support - 1).clamp(min=0)[:, None]).squeeze(1) - 1) / support.clamp(min=1)
    return tau, support


def focus_weights(
    new_vectors: torch.Tensor,
    new_ok: torch.Tensor,
    shared_vectors: torch.Tensor,
    shared_old_ids: torch.Tensor,
    old_rows: int,
    chunk_size: int = 1024,
) -> SparseCombination:
    """FOCUS weights of U new tokens over the old rows of the shared tokens.

    `new_vectors` [U, a] with `new_ok` [U] (has a vector), `shared_vectors` [S, a] (every shared token with a
    vector) whose old rows are `shared_old_ids` [S]. Cosines are computed `chunk_size` new tokens at a time, so
    memory is chunk_size x S. Returns a sparse [U, old_rows] matrix; `score` is each row's support size.
    """
    count = new_vectors.shape[0]
    support = torch.zeros(count)
    if shared_vectors.shape[0] == 0 or not bool(new_ok.any()):
        empty = torch.zeros(0, dtype=torch.long)
        return SparseCombination(
            sparse_matrix(empty, empty, torch.zeros(0), (count, old_rows)), new_ok & False, support
        )
    keys = torch.nn.functional.normalize(shared_vectors.to(torch.float32), dim=1)
    picked = new_ok.nonzero().squeeze(1)
    rows, cols, values = [], [], []
    for start in range(0, picked.numel(), chunk_size):
        chunk = picked[start : start + chunk_size]
        queries = torch.nn.functional.normalize(new_vectors[chunk].to(torch.float32), dim=1)
        weights = sparsemax(queries @ keys.T)
        row, col = weights.nonzero(as_tuple=True)
        rows.append(chunk[row])
        cols.append(shared_old_ids[col])
        values.append(weights[row, col])
        support[chunk] = (weights > 0).sum(dim=1).to(torch.float32)
    matrix = sparse_matrix(torch.cat(rows), torch.cat(cols), torch.cat(values), (count, old_rows))
    return SparseCombination(matrix=matrix, found=new_ok.clone(), score=support)


def estimate_focus(old: torch.Tensor, inputs: MethodInputs) -> Estimate:
    assert inputs.focus is not None
    return with_fallback(old, inputs, sparse_rows(inputs.focus.matrix, old), inputs.focus.found, "focus")


SPEC = MethodSpec(
    name="focus",
    fn=estimate_focus,
    needs=frozenset({"focus"}),
    summary="FOCUS: sparsemax over fastText similarities (trained on --text) to the shared tokens",
    uses_fallback=True,
)
