"""Each method against a hand computation on a tiny vocabulary.

Old vocabulary: 4 tokens with 2-d embeddings; auxiliary space is 2-d too, so cosines are easy to write down.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tokenadapt.methods import METHODS, get_method
from tokenadapt.methods.base import MethodInputs, SparseCombination
from tokenadapt.methods.combine import masked_softmax, sparse_matrix
from tokenadapt.methods.local import local_weights, whitespace_tail
from tokenadapt.neighbors import Neighbors, top_k_neighbors
from tokenadapt.options import TransplantOptions
from tokenadapt.vocab.decompose import Decomposition
from tokenadapt.vocab.forms import FORM_WEIGHTS, token_forms

OLD = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [4.0, 4.0]])
OLD_BYTES = torch.tensor([6.0, 5.0, 3.0, 1.0])


def unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values)
    return v / v.norm()


def make_inputs(options: TransplantOptions | None = None, candidates: torch.Tensor | None = None) -> MethodInputs:
    """Two new tokens: token 0 = pieces (0, 1), 11 bytes; token 1 cannot be spelled and has no text."""
    aux_old = torch.stack([unit(1.0, 0.0), unit(0.0, 1.0), unit(1.0, 1.0), unit(1.0, -1.0)])
    # a query with cos 0.6 to old 0 and cos 0.5 to old 1 does not exist in 2-d; use 3-d auxiliary space instead
    aux_old = torch.nn.functional.pad(aux_old, (0, 1))
    x, y = 0.6, 0.5
    query = torch.tensor([x, y, math.sqrt(1 - x * x - y * y)])
    return MethodInputs(
        new_ids=np.array([10, 11]),
        old_candidates=torch.tensor([True, True, True, False]) if candidates is None else candidates,
        new_byte_lengths=torch.tensor([11.0, 4.0]),
        old_byte_lengths=OLD_BYTES,
        options=options or TransplantOptions(),
        decomposition=Decomposition(
            pieces=torch.tensor([[0, 1], [0, 0]]), mask=torch.tensor([[True, True], [False, False]])
        ),
        aux_new=torch.stack([query, torch.zeros(3)]),
        aux_new_ok=torch.tensor([True, False]),
        aux_old=aux_old,
        aux_old_ok=torch.tensor([True, True, True, True]),
        neighbors=Neighbors(
            indices=torch.tensor([[0, 1, 2], [0, 0, 0]]),
            similarities=torch.tensor([[0.9, 0.6, 0.3], [0.0, 0.0, 0.0]]),
        ),
    )


CANDIDATE_MEAN = torch.tensor([2 / 3, 2 / 3])  # mean of rows 0..2; row 3 is not a real token


def test_local_matches_the_worked_example() -> None:
    estimate = get_method("local").fn(OLD, make_inputs())
    w_sem = torch.softmax(torch.tensor([0.6, 0.5]), 0)
    length = torch.tensor([6 / 11, 5 / 11])
    w = torch.softmax((w_sem + length) / 2 / 0.3, 0)
    assert torch.allclose(w, torch.tensor([0.559, 0.441]), atol=1e-3)  # the docstring's numbers
    assert torch.allclose(estimate.rows[0], w[0] * OLD[0] + w[1] * OLD[1], atol=1e-6)
    assert torch.allclose(estimate.rows[1], CANDIDATE_MEAN)  # unspellable -> mean of real old rows
    assert estimate.paths == {"local": 1, "fallback-mean": 1}


def test_whitespace_tail_marks_only_trailing_whitespace_after_text() -> None:
    whitespace = torch.tensor([False, True, True, False])  # old tokens 1 and 2 are whitespace ("\n", " ")
    pieces = torch.tensor([[0, 1, 2], [1, 0, 0], [1, 2, 0], [0, 1, 3], [0, 1, 0], [3, 0, 0]])
    mask = torch.tensor(
        [[True] * 3, [True, True, False], [True, True, False], [True] * 3, [True, True, False], [True, False, False]]
    )
    expected = torch.tensor(
        [
            [False, True, True],  # "x\n " -> both trailing pieces
            [False, False, False],  # "\nx": leading whitespace stays
            [False, False, False],  # "\n ": all whitespace, nothing left to weigh otherwise
            [False, False, False],  # "x\ny": inner whitespace stays
            [False, True, False],  # "x\n" with a padded slot
            [False, False, False],  # one piece
        ]
    )
    assert torch.equal(whitespace_tail(pieces, mask, whitespace), expected)


@pytest.mark.parametrize(
    "options, dropped",
    [
        (TransplantOptions(whitespace_tail="drop", method="local"), True),
        (TransplantOptions(), True),  # auto, hybrid
        (TransplantOptions(method="local"), False),  # auto keeps the published local estimate
        (TransplantOptions(whitespace_tail="keep"), False),
    ],
)
def test_local_weighs_only_the_head_of_a_token_ending_in_whitespace(options: TransplantOptions, dropped: bool) -> None:
    # token 0 = old pieces (0, 1); make old token 1 whitespace, so token 0 reads like ",\n"
    inputs = dataclasses.replace(make_inputs(options), old_whitespace=torch.tensor([False, True, False, False]))
    local = get_method("local").fn(OLD, inputs).rows
    paper = get_method("local").fn(OLD, make_inputs(TransplantOptions(whitespace_tail="keep"))).rows
    assert torch.allclose(local[0], OLD[0] if dropped else paper[0], atol=1e-6)
    assert torch.allclose(local[1], CANDIDATE_MEAN)
    hybrid = get_method("hybrid").fn(OLD, inputs).rows[0]
    global_ = get_method("global").fn(OLD, inputs).rows[0]
    assert torch.allclose(hybrid, 0.7 * local[0] + 0.3 * global_, atol=1e-6)


def test_global_matches_the_worked_example() -> None:
    estimate = get_method("global").fn(OLD, make_inputs())
    w = torch.softmax(torch.tensor([0.9, 0.6, 0.3]) / 0.3, 0)
    assert torch.allclose(estimate.rows[0], w[0] * OLD[0] + w[1] * OLD[1] + w[2] * OLD[2], atol=1e-6)
    assert torch.allclose(estimate.rows[1], CANDIDATE_MEAN)  # no text -> no neighbours
    assert estimate.paths == {"global": 1, "fallback-mean": 1}


def test_global_threshold_drops_weak_neighbours() -> None:
    estimate = get_method("global").fn(OLD, make_inputs(TransplantOptions(threshold=0.5)))
    w = torch.softmax(torch.tensor([0.9, 0.6]) / 0.3, 0)
    assert torch.allclose(estimate.rows[0], w[0] * OLD[0] + w[1] * OLD[1], atol=1e-6)


def test_hybrid_mixes_local_and_global_by_the_global_weight() -> None:
    inputs = make_inputs(TransplantOptions(global_weight=0.3))
    local = get_method("local").fn(OLD, inputs).rows[0]
    global_ = get_method("global").fn(OLD, inputs).rows[0]
    estimate = get_method("hybrid").fn(OLD, inputs)
    assert torch.allclose(estimate.rows[0], 0.7 * local + 0.3 * global_, atol=1e-6)
    assert estimate.paths == {"hybrid": 1, "local-only": 0, "global-only": 0, "fallback-mean": 1}


@pytest.mark.parametrize("share, expected", [(0.0, "local"), (1.0, "global")])
def test_hybrid_extremes_equal_the_pure_methods(share: float, expected: str) -> None:
    inputs = make_inputs(TransplantOptions(global_weight=share))
    assert torch.allclose(
        get_method("hybrid").fn(OLD, inputs).rows, get_method(expected).fn(OLD, inputs).rows, atol=1e-6
    )


def test_subword_mean_is_the_plain_mean_of_pieces() -> None:
    estimate = get_method("subword-mean").fn(OLD, make_inputs())
    assert torch.allclose(estimate.rows[0], (OLD[0] + OLD[1]) / 2)
    assert torch.allclose(estimate.rows[1], CANDIDATE_MEAN)


def test_mean_ignores_rows_that_are_not_real_tokens() -> None:
    estimate = get_method("mean").fn(OLD, make_inputs())
    assert torch.allclose(estimate.rows, CANDIDATE_MEAN.expand(2, -1))


def test_random_has_the_old_mean_and_covariance_and_is_seeded() -> None:
    torch.manual_seed(1)
    old = torch.randn(2000, 3) @ torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.3]]) + 5.0
    many = MethodInputs(
        new_ids=np.arange(20000),
        old_candidates=torch.ones(2000, dtype=torch.bool),
        new_byte_lengths=torch.ones(20000),
        old_byte_lengths=torch.ones(2000),
        options=TransplantOptions(seed=7),
    )
    rows = get_method("random").fn(old, many).rows
    assert torch.allclose(rows.mean(0), old.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(rows.T), torch.cov(old.T), atol=0.1)
    assert torch.equal(rows, get_method("random").fn(old, many).rows)


def test_every_method_handles_matrices_of_any_width_and_keeps_rows_finite() -> None:
    # the text, FOCUS and donor inputs: token 0 placed on old rows 0 and 1, token 1 left to the fallback
    placed = SparseCombination(
        sparse_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([0.5, 1.5]), (2, 4)),
        torch.tensor([True, False]),
        torch.tensor([2.0, 0.0]),
    )
    inputs = dataclasses.replace(make_inputs(), text_counts=placed, focus=placed, omp=placed)
    bias = OLD[:, :1]  # a [V, 1] bias is estimated like any other matrix
    for name, spec in METHODS.items():
        rows = spec.fn(bias, inputs).rows
        assert rows.shape == (2, 1), name
        assert torch.isfinite(rows).all(), name


def test_masked_softmax_rows_without_candidates_are_zero() -> None:
    weights = masked_softmax(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[True, False], [False, False]]))
    assert torch.equal(weights, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_top_k_neighbors_equals_brute_force_and_respects_the_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(50, 8, generator=generator), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=1)
    mask = torch.ones(30, dtype=torch.bool)
    mask[::3] = False
    found = top_k_neighbors(queries, keys, mask, k=4, chunk_size=7)
    sims = queries @ keys.T
    sims[:, ~mask] = float("-inf")
    expected = torch.topk(sims, 4, dim=1)
    assert torch.equal(found.indices, expected.indices)
    assert torch.allclose(found.similarities, expected.values)
    assert mask[found.indices].all()


def test_top_k_with_fewer_eligible_keys_than_k_marks_missing_slots() -> None:
    keys = torch.eye(3)
    found = top_k_neighbors(torch.eye(3), keys, torch.tensor([True, False, False]), k=2)
    assert (found.indices[:, 0] == 0).all()
    assert torch.isinf(found.similarities[:, 1]).all()


def test_top_k_with_duplicate_keys_and_queries_equals_brute_force_similarities() -> None:
    generator = torch.Generator().manual_seed(1)
    base = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=1)
    keys = base[torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 0])]  # ids 1-2, 4-6 and 0-9 share vectors
    queries = base[torch.tensor([1, 1, 3, 5])]
    mask = torch.ones(10, dtype=torch.bool)
    mask[5] = False
    found = top_k_neighbors(queries, keys, mask, k=3)
    brute = queries @ keys.T
    brute[:, ~mask] = float("-inf")
    expected = torch.topk(brute, 3, dim=1).values
    assert torch.allclose(found.similarities, expected)
    assert torch.allclose(brute.gather(1, found.indices), found.similarities)  # each id really has that similarity
    assert all(len(set(row.tolist())) == 3 for row in found.indices)  # no id twice
    assert mask[found.indices].all()
    assert found.indices[2, :2].tolist() == [4, 6]  # both ids of the best key (5 is masked), lowest id first


@pytest.mark.parametrize("bonus", [0.0, 0.05, 0.3])
def test_form_aware_neighbours_equal_brute_force_of_similarity_plus_bonus(bonus: float) -> None:
    generator = torch.Generator().manual_seed(2)
    base = torch.nn.functional.normalize(torch.randn(12, 6, generator=generator), dim=1)
    keys = base[torch.arange(40) % 12]  # each vector four times, as an uncased embedder gives " The", "the", ...
    key_forms = torch.nn.functional.one_hot(torch.arange(40) // 12 % 4, 4).float()
    key_forms[::7] = 0.0  # tokens with no form
    queries = torch.nn.functional.normalize(torch.randn(25, 6, generator=generator), dim=1)
    wanted = torch.nn.functional.one_hot(torch.randint(0, 4, (25,), generator=generator), 4).float()
    wanted[::5] = 0.0  # queries that ask for nothing rank by similarity alone
    mask = torch.ones(40, dtype=torch.bool)
    mask[3] = False
    found = top_k_neighbors(queries, keys, mask, 3, query_forms=wanted, key_forms=key_forms, form_bonus=bonus)
    cosine = queries @ keys.T
    score = (cosine + bonus * wanted @ key_forms.T).masked_fill(~mask, float("-inf"))
    expected = torch.topk(score, 3, dim=1).values
    assert torch.allclose(score.gather(1, found.indices), expected, atol=1e-6)  # the best three by the bonus rule
    assert torch.allclose(found.similarities, cosine.gather(1, found.indices), atol=1e-6)  # reported: plain cosines
    plain = top_k_neighbors(queries, keys, mask, 3)
    assert torch.equal(found.indices[::5], plain.indices[::5])  # no form asked: exactly the plain search
    if bonus == 0.0:
        assert torch.equal(found.indices, plain.indices)


def test_form_aware_search_in_small_chunks_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenadapt.neighbors as neighbors

    monkeypatch.setattr(neighbors, "SCORE_BLOCK", 1)  # 64 queries per chunk: many chunks of every kind
    generator = torch.Generator().manual_seed(3)
    base = torch.nn.functional.normalize(torch.randn(50, 5, generator=generator), dim=1)
    keys = base[torch.randint(0, 50, (120,), generator=generator)]
    key_forms = torch.nn.functional.one_hot(torch.randint(0, 4, (120,), generator=generator), 4).float()
    queries = torch.nn.functional.normalize(torch.randn(300, 5, generator=generator), dim=1)
    wanted = torch.nn.functional.one_hot(torch.randint(0, 5, (300,), generator=generator), 5).float()[:, :4]
    mask = torch.rand(120, generator=generator) > 0.2
    found = top_k_neighbors(queries, keys, mask, 4, query_forms=wanted, key_forms=key_forms, form_bonus=0.2)
    score = (queries @ keys.T + 0.2 * wanted @ key_forms.T).masked_fill(~mask, float("-inf"))
    assert torch.allclose(score.gather(1, found.indices), torch.topk(score, 4, dim=1).values, atol=1e-6)
    assert torch.allclose(found.similarities, (queries @ keys.T).gather(1, found.indices), atol=1e-6)
    assert all(len(set(row.tolist())) == 4 for row in found.indices) and mask[found.indices].all()


def test_identical_vectors_give_the_neighbour_of_the_query_form_first() -> None:
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])  # "the", " the" (same vector), another token
    key_forms = token_forms([b"the", b" the", b" a"])
    query = torch.tensor([[1.0, 0.0]])
    for text, first in ((b" them", 1), (b"them", 0)):
        found = top_k_neighbors(
            query,
            keys,
            torch.ones(3, dtype=torch.bool),
            2,
            query_forms=token_forms([text]),
            key_forms=key_forms,
            form_bonus=0.1,
        )
        assert found.indices[0].tolist() == [first, 1 - first]
        assert found.similarities[0].tolist() == pytest.approx([1.0, 1.0])
    unranked = top_k_neighbors(query, keys, torch.ones(3, dtype=torch.bool), 2)
    assert unranked.indices[0].tolist() == [0, 1]  # without forms: lowest id first
    upper = top_k_neighbors(
        query,
        keys,
        torch.ones(3, dtype=torch.bool),
        2,
        query_forms=token_forms([b"The"]),
        key_forms=key_forms,
        form_bonus=0.1,
    )
    assert upper.indices[0].tolist() == [0, 1]  # "the" shares the word start with "The", " the" nothing


def test_with_the_shipped_weights_a_shared_case_breaks_a_tie_before_a_shared_word_start() -> None:
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # "T" (id 0) and " t" (id 1): one vector to an uncased embedder
    key_forms = token_forms([b"T", b" t"])
    query, wanted = torch.tensor([[1.0, 0.0]]), token_forms([b".t"])  # no space, lower case: each shares one
    mask = torch.ones(2, dtype=torch.bool)
    even = top_k_neighbors(query, keys, mask, 1, query_forms=wanted, key_forms=key_forms, form_bonus=0.1)
    weighted = top_k_neighbors(
        query, keys, mask, 1, query_forms=wanted, key_forms=key_forms * FORM_WEIGHTS, form_bonus=0.1
    )
    assert even.indices.tolist() == [[0]]  # evenly weighted: a tie, lowest id
    assert weighted.indices.tolist() == [[1]]  # " t" shares the case
    assert weighted.similarities[0].tolist() == pytest.approx([1.0])


def test_neighbour_form_is_on_for_hybrid_alone_unless_asked() -> None:
    assert TransplantOptions().neighbor_form_bonus_active == 0.1
    assert TransplantOptions(method="global").neighbor_form_bonus_active == 0.0
    assert TransplantOptions(method="global", neighbor_form="match").neighbor_form_bonus_active == 0.1
    assert TransplantOptions(neighbor_form="ignore").neighbor_form_bonus_active == 0.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"neighbor_form": "sometimes"}, "--neighbor-form must be 'auto', 'match' or 'ignore'"),
        ({"neighbor_form_bonus": 1.5}, "--neighbor-form-bonus must be between 0 and 1"),
    ],
)
def test_a_bad_neighbour_form_setting_is_a_clear_error(settings: dict[str, object], message: str) -> None:
    from tokenadapt.errors import InputError

    with pytest.raises(InputError, match=message):
        TransplantOptions(**settings).validated()  # type: ignore[arg-type]


def test_a_bad_whitespace_tail_mode_is_a_clear_error() -> None:
    from tokenadapt.errors import InputError

    with pytest.raises(InputError, match="--whitespace-tail must be 'auto', 'drop' or 'keep'"):
        TransplantOptions(whitespace_tail="sometimes").validated()


def test_local_weights_are_derived_once_per_inputs_and_a_replaced_copy_starts_afresh() -> None:
    inputs = make_inputs()
    first = local_weights(inputs)
    assert local_weights(inputs) is first  # the prior and every column block reuse one computation
    hotter = dataclasses.replace(inputs, options=TransplantOptions(temperature=3.0))
    assert not torch.equal(local_weights(hotter)[1], first[1])  # other options, other weights
    assert torch.equal(local_weights(dataclasses.replace(inputs))[1], first[1])
