"""Top-k nearest neighbours by cosine similarity, as chunked matrix products (no per-token loop, no index library).

For a 130k x 50k search with 384-d vectors a chunked matmul + topk takes seconds on 2 cores and is exact; an ANN
index would only pay off far beyond vocabulary sizes.

    >>> sims, ids = top_k_neighbors(queries, keys, key_mask, k=3)   # [U, 3], [U, 3]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

SCORE_BLOCK = 1 << 26  # floats (256 MB) of query x key scores computed at once


@dataclass(frozen=True)
class Neighbors:
    """For each query row: the k most similar key ids (`indices` [U, k]) and their cosine `similarities` [U, k]."""

    indices: torch.Tensor
    similarities: torch.Tensor


def top_k_neighbors(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_mask: torch.Tensor,
    k: int,
    chunk_size: int = 4096,
    progress: bool = False,
    query_forms: torch.Tensor | None = None,
    key_forms: torch.Tensor | None = None,
    form_bonus: float = 0.0,
) -> Neighbors:
    """Exact top-k over the keys where `key_mask` is True; inputs are L2-normalised [U, a] and [V, a].

    Identical vectors are searched once: an uncased embedder gives " The", "the" and "THE" one vector, which cuts
    a vocabulary search by a third or more. Identical queries get identical answers; a key shared by several ids
    expands back into those ids (lowest id first), so the result equals a brute-force search up to the order of
    equal similarities. Fewer than k eligible keys: the missing slots get similarity -inf (callers mask them out).

    With `form_bonus` b > 0 and form features [U, f], [V, f] (`vocab.forms`), keys rank by cos + b x (forms they
    share with the query), still exactly and at about the cost of the plain search: ids that share a vector differ
    in score only by their forms, so a vector ranks by its best-matching id, and its ids expand best match first,
    then lowest id. The similarities returned are the plain cosines.
    """
    indices = torch.zeros((queries.shape[0], k), dtype=torch.long)
    sims = torch.full((queries.shape[0], k), float("-inf"))
    eligible = key_mask.nonzero().squeeze(1)
    if eligible.numel() == 0 or queries.shape[0] == 0:
        return Neighbors(indices, sims)
    pool, key_inverse = torch.unique(keys[eligible], dim=0, return_inverse=True)
    forms = (query_forms, key_forms) if form_bonus > 0 and query_forms is not None and key_forms is not None else None
    width = queries.shape[1]
    rows = torch.cat([queries, forms[0]], dim=1) if forms is not None else queries
    unique_rows, query_inverse = torch.unique(rows, dim=0, return_inverse=True)
    if forms is not None:
        kinds, kind_of = torch.unique(unique_rows[:, width:], dim=0, return_inverse=True)  # the forms asked for
        eligible_forms = forms[1][eligible]
    else:
        kinds, kind_of = torch.zeros((1, 1)), torch.zeros(unique_rows.shape[0], dtype=torch.long)
        eligible_forms = torch.zeros((eligible.numel(), 1))
    # a chunk's [chunk, pool] score matrix stays near SCORE_BLOCK floats however large the old vocabulary
    chunk_size = max(64, min(chunk_size, SCORE_BLOCK // max(pool.shape[0], 1)))
    k_pool = min(k, pool.shape[0])
    found_ids = torch.full((unique_rows.shape[0], k), -1, dtype=torch.long)
    found_sims = torch.full((unique_rows.shape[0], k), float("-inf"))
    by_kind = [(kind_of == kind).nonzero().squeeze(1).split(chunk_size) for kind in range(kinds.shape[0])]
    bar = tqdm(total=sum(len(chunks) for chunks in by_kind), desc="neighbours", unit="chunk", disable=not progress)
    for kind, chunks in enumerate(by_kind):
        # [P, k] ids (-1 padded) of each vector and the forms each shares with this kind of query
        members, matches = _ranked_members(key_inverse, eligible, eligible_forms @ kinds[kind], pool.shape[0], k)
        for chunk in chunks:
            _search_chunk(
                unique_rows[chunk, :width], pool, members, matches, form_bonus, k_pool, found_ids, found_sims, chunk
            )
            bar.update()
    bar.close()
    return Neighbors(found_ids[query_inverse], found_sims[query_inverse])


def _search_chunk(
    queries: torch.Tensor,
    pool: torch.Tensor,
    members: torch.Tensor,
    matches: torch.Tensor,
    form_bonus: float,
    k_pool: int,
    found_ids: torch.Tensor,
    found_sims: torch.Tensor,
    chunk: torch.Tensor,
) -> None:
    """Fill found_ids/found_sims[chunk] with the top-k ids of each query [c, a] among the unique vectors."""
    k = members.shape[1]
    scores = queries @ pool.T
    best = matches[:, 0]
    if form_bonus > 0 and bool(best.any()):
        top = torch.topk(scores.add_(form_bonus * best), k_pool, dim=1)  # each vector ranks by its best id
        top_sims = top.values - form_bonus * best[top.indices]
    else:
        top = torch.topk(scores, k_pool, dim=1)
        top_sims = top.values
    # expand each vector into its ids; a stable sort keeps vector rank, then member rank, among equal scores
    candidate_ids = members[top.indices].flatten(1)  # [c, k_pool * k]
    candidate_sims = top_sims.unsqueeze(2).expand(-1, -1, k).flatten(1)
    score = (candidate_sims + form_bonus * matches[top.indices].flatten(1)).masked_fill(
        candidate_ids < 0, float("-inf")
    )
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    chosen_valid = torch.gather(candidate_ids, 1, order) >= 0
    found_ids[chunk] = torch.gather(candidate_ids, 1, order).masked_fill(~chosen_valid, 0)
    found_sims[chunk] = torch.gather(candidate_sims, 1, order).masked_fill(~chosen_valid, float("-inf"))


def _ranked_members(
    inverse: torch.Tensor, ids: torch.Tensor, match: torch.Tensor, groups: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """([groups, k] ids, [groups, k] their `match`): each group's first k ids by match (highest first), then id.

    `inverse` [E] is each id's group, `ids` [E] ascending, `match` [E] a score per id; ids are padded with -1.
    """
    order = torch.sort(-match, stable=True).indices  # ids stay ascending among equal matches
    order = order[torch.sort(inverse[order], stable=True).indices]  # then grouped, each group best match first
    counts = torch.bincount(inverse, minlength=groups)
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(k)
    position = (starts[:, None] + offsets).clamp(max=ids.numel() - 1)
    missing = offsets >= counts[:, None]
    return ids[order[position]].masked_fill(missing, -1), match[order[position]].masked_fill(missing, 0.0)
