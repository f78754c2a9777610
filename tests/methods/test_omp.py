"""`omp`: batched OMP against hand computations and exact reconstructions; donor checks end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import save_model_dir
from tests.methods.test_methods import OLD, make_inputs
from tokenadapt.errors import InputError
from tokenadapt.methods import get_method
from tokenadapt.methods.omp import batch_omp, omp_codes
from tokenadapt.options import TransplantOptions
from tokenadapt.transplant import transplant


def test_batch_omp_matches_the_worked_example() -> None:
    indices, coefficients, residual = batch_omp(torch.tensor([[2.0, 3.0]]), torch.eye(2), k=2)
    assert indices.tolist() == [[1, 0]]
    assert torch.allclose(coefficients, torch.tensor([[3.0, 2.0]]))
    assert residual.tolist() == [0.0]


@pytest.mark.parametrize("candidates", [0, 12])
def test_k_equal_to_the_anchors_reconstructs_an_exact_combination(candidates: int) -> None:
    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(12, 16, generator=generator) * torch.linspace(0.5, 3.0, 12)[:, None]  # unequal norms
    # a 13th anchor orthogonal to the others: never correlated with a target, so screening to 12 drops it and the
    # candidate (Gram) path runs with all 12 anchors that matter
    extra = torch.linalg.svd(atoms, full_matrices=True).Vh[-1]
    atoms = torch.cat([atoms, extra[None]])
    truth = torch.zeros(3, 13)
    truth[0, [1, 5, 9]] = torch.tensor([2.0, -1.0, 0.5])
    truth[1, :12] = torch.randn(12, generator=generator)  # uses every anchor but the extra one
    truth[2, 3] = 4.0
    targets = truth @ atoms
    indices, coefficients, residual = batch_omp(targets, atoms, k=12, candidates=candidates, batch_size=2)
    dense = torch.zeros(3, 13).scatter_add_(1, indices, coefficients)
    assert torch.allclose(dense, truth, atol=1e-3)
    assert (residual < 1e-3).all()
    assert sorted(indices[0, :3].tolist()) == [1, 5, 9]  # a 3-sparse target is found in its first 3 steps


def test_screening_keeps_the_exact_answer_when_the_support_is_among_the_candidates() -> None:
    atoms = torch.eye(8)
    targets = torch.tensor([[0.0, 5.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.1]])
    exact = batch_omp(targets, atoms, k=3)
    screened = batch_omp(targets, atoms, k=3, candidates=4)
    for a, b in zip(exact, screened, strict=True):
        assert torch.allclose(a.to(torch.float32), b.to(torch.float32))
    assert exact[0].tolist() == [[1, 3, 7]]


def test_duplicate_atoms_and_zero_targets_stay_finite() -> None:
    atoms = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # three atoms on one direction
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    for candidates in (0, 3):
        indices, coefficients, residual = batch_omp(targets, atoms, k=4, candidates=candidates)
        assert torch.isfinite(coefficients).all() and torch.isfinite(residual).all()
        dense = torch.zeros(2, 4).scatter_add_(1, indices, coefficients)
        assert torch.allclose(dense @ atoms, targets, atol=1e-5)
        assert (coefficients[1] == 0).all() and residual[1] == 0


def test_codes_apply_the_donor_coefficients_to_the_base_rows() -> None:
    # donor space: anchors (1,0) and (0,1) are old ids 2 and 0; new token 0 = 3 a_1 + 2 a_0, token 1 has no donor row
    codes = omp_codes(
        torch.tensor([[2.0, 3.0], [0.0, 0.0]]),
        torch.eye(2),
        torch.tensor([2, 0]),
        torch.tensor([True, False]),
        old_rows=4,
        k=2,
        candidates=0,
    )
    base = make_inputs(TransplantOptions(method="omp", donor="x", fallback="mean"))
    estimate = get_method("omp").fn(OLD, dataclasses.replace(base, omp=codes))
    assert torch.allclose(estimate.rows[0], 2 * OLD[2] + 3 * OLD[0])
    assert estimate.paths == {"omp": 1, "fallback-mean": 1}
    assert codes.score[0] == 0 and torch.isinf(codes.score[1])


def test_omp_hybrid_takes_omp_only_where_the_donor_explains_the_token() -> None:
    codes = omp_codes(
        torch.tensor([[2.0, 3.0], [1.0, 1.0]]),
        torch.tensor([[1.0, 0.0]]),  # one anchor: token 0 is poorly explained, token 1 too but less badly
        torch.tensor([1]),
        torch.tensor([True, True]),
        old_rows=4,
        k=1,
        candidates=0,
    )
    assert codes.score.tolist() == pytest.approx([3 / 13**0.5, 1 / 2**0.5])
    base = make_inputs(TransplantOptions(method="omp-hybrid", donor="x", omp_max_residual=0.75))
    inputs = dataclasses.replace(base, omp=codes)
    estimate = get_method("omp-hybrid").fn(OLD, inputs)
    hybrid = get_method("hybrid").fn(OLD, inputs).rows
    assert torch.allclose(estimate.rows[0], hybrid[0])  # residual 0.83 > 0.75
    assert torch.allclose(estimate.rows[1], OLD[1])  # residual 0.71: coefficient 1 on the anchor (old id 1)
    assert estimate.paths == {"omp": 1, "hybrid": 1}


def test_omp_needs_a_donor() -> None:
    with pytest.raises(InputError, match="--donor"):
        TransplantOptions(method="omp").validated()
    with pytest.raises(InputError, match="--omp-candidates"):
        TransplantOptions(method="omp", donor="x", omp_k=64, omp_candidates=32).validated()


def test_omp_end_to_end_with_a_donor_and_a_clear_error_for_a_mismatched_one(
    tmp_path: Path,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
    metaspace_tokenizer: Any,
    byte_level_tokenizer: Any,
) -> None:
    donor = save_model_dir(tmp_path / "donor", metaspace_tokenizer)  # already uses the new tokenizer
    options = TransplantOptions(
        method="omp", donor=str(donor), embedder=str(tiny_embedder_dir), omp_k=8, omp_candidates=16
    )
    result = transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "out", options)
    assert result.method_paths["input"]["omp"] == result.counts["estimated"]
    assert any(w.startswith("omp: median relative residual") for w in result.warnings)
    again = transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "again", options)  # codes come from the cache
    assert "omp" in again.timings and again.method_paths == result.method_paths

    wrong = save_model_dir(tmp_path / "wrong-donor", byte_level_tokenizer)  # the old tokenizer, not the new one
    with pytest.raises(InputError, match="does not use the target tokenizer"):
        transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "bad", dataclasses.replace(options, donor=str(wrong)))
    assert not (tmp_path / "bad").exists()


def test_omp_is_batched_not_a_per_token_loop() -> None:
    generator = torch.Generator().manual_seed(1)
    atoms = torch.randn(300, 24, generator=generator)
    targets = torch.randn(1000, 24, generator=generator)
    indices, coefficients, residual = batch_omp(targets, atoms, k=16, candidates=64, batch_size=512)
    assert indices.shape == coefficients.shape == (1000, 16)
    assert np.all(np.diff(np.sort(indices.numpy(), axis=1), axis=1) > 0)  # no anchor twice in one code
    assert ((residual >= 0) & (residual < 1)).all()


def test_omp_selects_by_inner_product_like_mergekit_or_by_cosine() -> None:
    target = torch.tensor([[1.0, 0.2]])
    atoms = torch.tensor([[1.0, 0.0], [2.0, 2.0]])  # cosine favours the first, the inner product the longer second
    for selection, first in (("cosine", 0), ("inner", 1)):
        index, coefficient, _ = batch_omp(target, atoms, k=1, selection=selection)
        assert index.tolist() == [[first]]
        best = (target @ atoms[first]) / (atoms[first] @ atoms[first])  # least squares on the one atom
        assert coefficient[0, 0] == pytest.approx(float(best))
        index, coefficient, residual = batch_omp(target, atoms, k=2, selection=selection)
        assert torch.allclose(coefficient[0] @ atoms[index[0]], target[0], atol=1e-5) and residual[0] < 1e-3
    with pytest.raises(ValueError, match="selection"):
        batch_omp(target, atoms, k=1, selection="nearest")
