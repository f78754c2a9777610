"""Blockwise top-k equals torch.topk, and the neighbour search on wide key sets equals brute force.

The search's tests on small key sets (one block, so plain torch.topk) are with the methods' in
tests/methods/test_methods.py; these use key sets wide enough for the blockwise path.
"""

from __future__ import annotations

import pytest
import torch

from tokenadapt import neighbors
from tokenadapt.neighbors import COLUMN_BLOCK, blockwise_topk, quantize_int8, top_k_neighbors


@pytest.mark.parametrize(("width", "block", "k"), [(1000, 16, 3), (1024, 16, 3), (257, 8, 5), (40, 8, 1), (30, 8, 4)])
def test_blockwise_topk_equals_torch_topk(width: int, block: int, k: int) -> None:
    generator = torch.Generator().manual_seed(width + k)
    scores = torch.randn(64, width, generator=generator)
    scores[:5, -3:] += 10.0  # winners in the last, shorter block
    scores[5:10, :block] += 10.0  # all winners in one block
    found = blockwise_topk(scores, k, block=block)
    expected = torch.topk(scores, k, dim=1)
    assert torch.equal(found.values, expected.values)
    assert torch.equal(found.indices, expected.indices)  # no ties in random floats: the same columns


def test_blockwise_topk_with_ties_and_infinities_returns_true_top_values() -> None:
    generator = torch.Generator().manual_seed(7)
    scores = torch.randint(0, 6, (200, 300), generator=generator).float()  # heavy ties
    scores[::4, ::3] = float("-inf")
    found = blockwise_topk(scores, 4, block=10)
    assert torch.equal(found.values, torch.topk(scores, 4, dim=1).values)
    assert torch.equal(scores.gather(1, found.indices), found.values)  # each index really holds its value
    assert all(len(set(row.tolist())) == 4 for row in found.indices)  # no column twice


def test_blockwise_topk_on_a_non_contiguous_view_falls_back_to_torch() -> None:
    scores = torch.randn(300, 40).T  # [40, 300], not contiguous
    found = blockwise_topk(scores, 2, block=8)
    assert torch.equal(found.indices, torch.topk(scores, 2, dim=1).indices)


@pytest.mark.parametrize("bonus", [0.0, 0.1])
def test_search_over_many_blocks_equals_brute_force(bonus: float) -> None:
    generator = torch.Generator().manual_seed(11)
    keys = torch.nn.functional.normalize(torch.randn(20 * COLUMN_BLOCK + 37, 12, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(90, 12, generator=generator), dim=1)
    key_forms = torch.nn.functional.one_hot(torch.randint(0, 4, (keys.shape[0],), generator=generator), 4).float()
    wanted = torch.nn.functional.one_hot(torch.randint(0, 4, (90,), generator=generator), 4).float()
    mask = torch.rand(keys.shape[0], generator=generator) > 0.1
    found = top_k_neighbors(queries, keys, mask, 3, query_forms=wanted, key_forms=key_forms, form_bonus=bonus)
    cosine = queries @ keys.T
    score = (cosine + bonus * wanted @ key_forms.T).masked_fill(~mask, float("-inf"))
    expected = torch.topk(score, 3, dim=1)
    assert torch.equal(found.indices, expected.indices)
    assert torch.allclose(found.similarities, cosine.gather(1, expected.indices), atol=1e-6)


def test_int8_rounding_stays_within_the_bound_the_certificate_uses() -> None:
    generator = torch.Generator().manual_seed(5)
    queries = torch.nn.functional.normalize(torch.randn(200, 32, generator=generator), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(300, 32, generator=generator), dim=1)
    q8, k8 = quantize_int8(queries), quantize_int8(keys)
    approx = (q8.values.double() @ k8.values.double().T) / (q8.scale * k8.scale)
    error = (approx - (queries @ keys.T).double()).abs()
    assert bool((error <= neighbors.rounding_bound(q8, float(k8.error.max()))[:, None] + 1e-6).all())
    assert float(error.max()) > 0  # rounding did happen


def test_the_bound_covers_the_worst_case_where_only_the_key_is_rounded() -> None:
    query = torch.zeros(1, 8)
    query[0, 0] = 1.0  # rounds exactly: no query error at all
    key = torch.zeros(1, 8)
    key[0, 0], key[0, 1] = 0.6, 0.8  # with 0.8 -> 127, 0.6 -> 95.25: a quarter step off
    q8, k8 = quantize_int8(query), quantize_int8(key, scale=127 / 0.8)
    error = abs(float(q8.values.double() @ k8.values.double().T) / (q8.scale * k8.scale) - 0.6)
    assert float(q8.error[0]) == 0.0 and error > 0.001
    assert error <= float(neighbors.rounding_bound(q8, float(k8.error.max()))[0]) + 1e-9


@pytest.fixture
def spy_float_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Switch the int8 search on and record how many query rows each float32 search got."""
    monkeypatch.setattr(neighbors, "INT8_SEARCH", "on")
    rows: list[int] = []
    original = neighbors._float_top

    def spy(queries: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        rows.append(queries.shape[0])
        return original(queries, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(neighbors, "_float_top", spy)
    return rows


@pytest.mark.parametrize("bonus", [0.0, 0.1])
def test_int8_search_equals_brute_force_and_certifies_most_rows(bonus: float, spy_float_rows: list[int]) -> None:
    generator = torch.Generator().manual_seed(13)
    keys = torch.nn.functional.normalize(torch.randn(3000, 24, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(400, 24, generator=generator), dim=1)
    key_forms = torch.nn.functional.one_hot(torch.randint(0, 4, (3000,), generator=generator), 4).float()
    wanted = torch.nn.functional.one_hot(torch.randint(0, 4, (400,), generator=generator), 4).float()
    mask = torch.rand(3000, generator=generator) > 0.1
    found = top_k_neighbors(queries, keys, mask, 3, query_forms=wanted, key_forms=key_forms, form_bonus=bonus)
    cosine = queries @ keys.T
    score = (cosine + bonus * wanted @ key_forms.T).masked_fill(~mask, float("-inf"))
    assert torch.equal(found.indices, torch.topk(score, 3, dim=1).indices)
    assert torch.allclose(found.similarities, cosine.gather(1, found.indices), atol=1e-6)
    assert sum(spy_float_rows) < 400 // 4  # most rows were proved by the int8 pass


def test_rows_the_int8_bound_cannot_prove_are_searched_in_float(spy_float_rows: list[int]) -> None:
    generator = torch.Generator().manual_seed(17)
    query = torch.nn.functional.normalize(torch.randn(1, 16, generator=generator), dim=1)
    # 2,000 keys within 1e-3 of the query's direction: their cosines differ by less than the rounding bound
    keys = torch.nn.functional.normalize(query + 1e-3 * torch.randn(2000, 16, generator=generator), dim=1)
    keys[1500:] = torch.nn.functional.normalize(torch.randn(500, 16, generator=generator), dim=1)
    queries = torch.cat([query, keys[1500:1510]])  # and ten easy queries
    found = top_k_neighbors(queries, keys, torch.ones(2000, dtype=torch.bool), 3)
    assert torch.equal(found.indices, torch.topk(queries @ keys.T, 3, dim=1).indices)
    assert spy_float_rows == [1]  # exactly the hard row took the float32 search


def test_int8_search_is_chosen_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert neighbors._use_int8(32_000, 3)
    assert not neighbors._use_int8(500, 3)  # a narrow pool: the float32 search is as quick
    assert not neighbors._use_int8(32_000, 20)  # a large k: too few candidates to spare
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert not neighbors._use_int8(32_000, 3)  # no oneDNN int8 GEMM to count on
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.delattr(torch, "_int_mm")
    assert not neighbors._use_int8(32_000, 3)  # a torch without the kernel
