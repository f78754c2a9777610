"""Top-k nearest neighbours by cosine similarity, as chunked matrix products (no per-token loop, no index library).

For a 130k x 50k search with 384-d vectors a chunked matmul + topk takes seconds on 2 cores and is exact; an ANN
index would only pay off far beyond vocabulary sizes. Two things halve that time and keep it exact:
- an int8 matmul of the rounded vectors (twice float32's speed on x86) proposes 32 candidates per query, which are
  scored again in float32; a bound on the rounding error proves, row by row, that no other vector can be in the
  top k, and the rows it cannot prove (0.06% on SmolLM2 -> Qwen2) are searched in float32 (`_int8_top`);
- the top k of each score row comes from the best k blocks of 128 columns (`blockwise_topk`), not a full topk.
SmolLM2 -> Qwen2's 74,629 queries x 32,462 keys: 12.8 s in float32 with torch.topk, 10.7 s with the blocks, 7.9 s
with int8 candidates as well (one profiled run; `benchmarks/cold_path.py` times the last two: 12.3 s and 8.7 s).

    >>> sims, ids = top_k_neighbors(queries, keys, key_mask, k=3)   # [U, 3], [U, 3]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

SCORE_BLOCK = 1 << 26  # floats (256 MB) of query x key scores computed at once
COLUMN_BLOCK = 128  # columns per block in `blockwise_topk`: a 32k-key row is 256 block maxima
CANDIDATES = 32  # pool vectors per query that the int8 pass hands to the exact check
INT8_SEARCH = "auto"  # "auto": int8 candidates where torch's CPU kernels have fast int8 GEMM; "on" / "off"
RESCORE_ROWS = 128  # queries whose candidates are gathered and scored at once
SLACK = 1e-4  # added to the int8 bound: float32 rounding of the exact scores and of the norms in the bound


@dataclass(frozen=True)
class Neighbors:
    """For each query row: the k most similar key ids (`indices` [U, k]) and their cosine `similarities` [U, k]."""

    indices: torch.Tensor
    similarities: torch.Tensor
    from_cache: bool = False


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
    int8 = _use_int8(pool.shape[0], k_pool)
    pool8 = quantize_int8(pool) if int8 else None
    query_scale = _int8_scale(unique_rows[:, :width]) if int8 else 0.0
    bar = tqdm(total=sum(len(chunks) for chunks in by_kind), desc="neighbours", unit="chunk", disable=not progress)
    for kind, chunks in enumerate(by_kind):
        # [P, k] ids (-1 padded) of each vector and the forms each shares with this kind of query
        members, matches = _ranked_members(key_inverse, eligible, eligible_forms @ kinds[kind], pool.shape[0], k)
        for chunk in chunks:
            _search_chunk(
                unique_rows[chunk, :width],
                pool,
                members,
                matches,
                form_bonus,
                k_pool,
                found_ids,
                found_sims,
                chunk,
                pool8,
                query_scale,
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
    pool8: Int8Rows | None = None,
    query_scale: float = 0.0,
) -> None:
    """Fill found_ids/found_sims[chunk] with the top-k ids of each query [c, a] among the unique vectors."""
    k = members.shape[1]
    best = matches[:, 0]
    bonus = form_bonus * best if form_bonus > 0 and bool(best.any()) else None  # each vector ranks by its best id
    if pool8 is not None:
        top_ids, top_sims, certified = _int8_top(queries, pool, pool8, query_scale, bonus, k_pool)
        if not bool(certified.all()):
            rest = (~certified).nonzero().squeeze(1)
            top_ids[rest], top_sims[rest] = _float_top(queries[rest], pool, bonus, k_pool)
    else:
        top_ids, top_sims = _float_top(queries, pool, bonus, k_pool)
    # expand each vector into its ids; a stable sort keeps vector rank, then member rank, among equal scores
    candidate_ids = members[top_ids].flatten(1)  # [c, k_pool * k]
    candidate_sims = top_sims.unsqueeze(2).expand(-1, -1, k).flatten(1)
    score = (candidate_sims + form_bonus * matches[top_ids].flatten(1)).masked_fill(candidate_ids < 0, float("-inf"))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    chosen_valid = torch.gather(candidate_ids, 1, order) >= 0
    found_ids[chunk] = torch.gather(candidate_ids, 1, order).masked_fill(~chosen_valid, 0)
    found_sims[chunk] = torch.gather(candidate_sims, 1, order).masked_fill(~chosen_valid, float("-inf"))


def _float_top(
    queries: torch.Tensor, pool: torch.Tensor, bonus: torch.Tensor | None, k_pool: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool ids [c, k_pool], cosines [c, k_pool]) of the best vectors by cos + bonus, from a float32 matmul."""
    scores = queries @ pool.T
    if bonus is None:
        top = blockwise_topk(scores, k_pool)
        return top.indices, top.values
    top = blockwise_topk(scores.add_(bonus), k_pool)
    return top.indices, top.values - bonus[top.indices]


@dataclass(frozen=True)
class Int8Rows:
    """Rows [n, a] rounded at one `scale` to int8: `values / scale` is within `error` [n] (L2) of each row, and
    has L2 norm `norm` [n]."""

    values: torch.Tensor
    scale: float
    error: torch.Tensor
    norm: torch.Tensor


def _int8_scale(rows: torch.Tensor) -> float:
    return 127.0 / max(float(rows.abs().max()), 1e-12)


def quantize_int8(rows: torch.Tensor, scale: float | None = None) -> Int8Rows:
    """Round rows [n, a] to int8 at `scale` (default: the largest entry maps to 127)."""
    scale = _int8_scale(rows) if scale is None else scale
    values = torch.round(rows * scale).clamp(-127, 127).to(torch.int8)
    rounded = values.float() / scale
    return Int8Rows(values, scale, (rows - rounded).norm(dim=1), rounded.norm(dim=1))


def rounding_bound(queries: Int8Rows, key_error: float) -> torch.Tensor:
    """[c] float64: how far rounding can move a query's score with any unit key whose rounding error is at most
    `key_error`: q.k - q'.k' = (q - q').k + q'.(k - k'), so |.| <= e_q + |q'| e_k."""
    return queries.error.double() + queries.norm.double() * key_error


def _use_int8(pool_size: int, k_pool: int) -> bool:
    """Int8 candidates pay where the pool is wide, k small, and torch has oneDNN's int8 GEMM (x86 AVX2 or up)."""
    if INT8_SEARCH != "auto":
        return INT8_SEARCH == "on" and pool_size > CANDIDATES and k_pool <= CANDIDATES // 2
    fast = torch.backends.cpu.get_cpu_capability() in {"AVX2", "AVX512"} and hasattr(torch, "_int_mm")
    return fast and pool_size >= 8 * COLUMN_BLOCK and k_pool <= CANDIDATES // 4


def _int8_top(
    queries: torch.Tensor,
    pool: torch.Tensor,
    pool8: Int8Rows,
    query_scale: float,
    bonus: torch.Tensor | None,
    k_pool: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pool ids [c, k_pool], cosines [c, k_pool], certified [c] bool): `_float_top` at half the cost, for the rows
    it can prove right.

    An exact int8 matmul of the rounded vectors ranks the pool approximately; the best CANDIDATES are scored again
    exactly in float32. Rounding moves a score by at most e_q + |q'| e_max (e: the L2 rounding errors; q' the
    rounded query; |k| = 1), so no vector outside the candidates can beat the last candidate's approximate score
    by more than that. A row whose k-th exact score clears that ceiling is certified; the caller searches the
    rest in float32 (on SmolLM2 -> Qwen2, 45 of 74,629 rows).
    """
    q8 = quantize_int8(queries, query_scale)
    approx = torch._int_mm(q8.values, pool8.values.T)  # [c, P] int32: exact dot products of the rounded vectors
    unit = 1.0 / (q8.scale * pool8.scale)  # the score one integer step stands for
    if bonus is not None:
        approx.add_(torch.round(bonus / unit).to(torch.int32))  # off by at most half a step
    candidates = blockwise_topk(approx, min(CANDIDATES, pool.shape[0]))
    cosines = torch.empty(candidates.indices.shape)  # [c, m] exact, float32; in slices that stay in cache
    for start in range(0, queries.shape[0], RESCORE_ROWS):
        rows = slice(start, start + RESCORE_ROWS)
        cosines[rows] = torch.bmm(pool[candidates.indices[rows]], queries[rows, :, None])[:, :, 0]
    scores = cosines if bonus is None else cosines + bonus[candidates.indices]
    top = torch.topk(scores, k_pool, dim=1)
    ceiling = (
        candidates.values[:, -1].double() * unit
        + rounding_bound(q8, float(pool8.error.max()))
        + (unit / 2 if bonus is not None else 0.0)
        + SLACK
    )
    certified = top.values[:, -1].double() > ceiling
    return candidates.indices.gather(1, top.indices), cosines.gather(1, top.indices), certified


class TopK(NamedTuple):
    values: torch.Tensor
    indices: torch.Tensor


def blockwise_topk(scores: torch.Tensor, k: int, block: int | None = None) -> TopK:
    """`torch.topk(scores, k, dim=1)`, exactly, in a fifth of the time for wide rows and a small k.

    A row's k largest values lie in the k blocks of `block` columns with the largest maxima (a block holding one
    of them has a maximum at least the k-th value, and at most k blocks can), so the full top-k only looks at
    k x `block` candidates after one `amax` over the row. Among equal values the choice may differ from
    `torch.topk`'s, which leaves it unspecified too. scores [c, n] -> values, indices [c, k], largest first.

        >>> blockwise_topk(torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]]), 2, block=2).indices.tolist()
        [[1, 3]]
    """
    rows, width = scores.shape
    block = block or max(8, min(COLUMN_BLOCK, 1024 // k))  # k x block candidates after the block maxima
    blocks = -(-width // block)
    if blocks <= 2 * k or not scores.is_contiguous():
        return TopK(*torch.topk(scores, k, dim=1))
    whole = width // block
    maxima = scores[:, : whole * block].view(rows, whole, block).amax(2)
    if whole < blocks:  # the last, shorter block
        maxima = torch.cat([maxima, scores[:, whole * block :].amax(1, keepdim=True)], dim=1)
    chosen = torch.topk(maxima, k, dim=1).indices  # [c, k] blocks
    columns = (chosen[:, :, None] * block + torch.arange(block)).flatten(1)  # [c, k * block]
    outside = columns >= width
    lowest = float("-inf") if scores.is_floating_point() else torch.iinfo(scores.dtype).min
    candidates = scores.gather(1, columns.clamp(max=width - 1)).masked_fill(outside, lowest)
    top = torch.topk(candidates, k, dim=1)
    return TopK(top.values, columns.gather(1, top.indices))


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
