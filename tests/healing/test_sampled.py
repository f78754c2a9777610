"""The sampled head: its estimate of the softmax gradient is unbiased, exact when every token is kept, and its
log-probabilities (the loss) are exact."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import tiny_llama
from tests.healing.test_affine import features
from tokenadapt.healing import trainer as trainer_module
from tokenadapt.healing.affine import AffineHead, AffineRows, Lookup
from tokenadapt.healing.data import Sequence
from tokenadapt.healing.objectives import token_log_probs
from tokenadapt.healing.sampled import SampledAffineHead, gathered_sum, scattered_rows, sparse_softmax_gradient
from tokenadapt.healing.trainer import _Trainable, _Trainer
from tokenadapt.options import HealOptions


def dense(index: torch.Tensor, coefficient: torch.Tensor, vocabulary: int) -> torch.Tensor:
    return torch.zeros(index.shape[0], vocabulary).scatter_add_(1, index, coefficient)


def test_the_sparse_gradient_is_unbiased_and_each_row_sums_to_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, generator=generator) * 2
    targets = torch.tensor([4, 0, 11])
    exact = torch.nn.functional.one_hot(targets, 12).float() - torch.softmax(logits, dim=1)
    draws = []
    for _ in range(3000):
        index, coefficient = sparse_softmax_gradient(logits.clone(), targets, 2, generator)
        assert index.shape == coefficient.shape == (3, 5)
        estimate = dense(index, coefficient, 12)
        assert torch.allclose(estimate.sum(dim=1), torch.zeros(3), atol=1e-5)  # like e_y - p: no net mass
        draws.append(estimate)
    mean = torch.stack(draws).mean(dim=0)
    assert torch.allclose(mean, exact, atol=6e-3)
    # the two most probable tokens of each row are exact in every draw, never sampled
    top = torch.softmax(logits, dim=1).topk(2, dim=1).indices
    spread = torch.stack(draws).std(dim=0)
    assert torch.all(spread.gather(1, top) < 1e-6)


def test_keeping_every_token_gives_the_exact_gradient() -> None:
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 5, 2, 2])
    index, coefficient = sparse_softmax_gradient(logits.clone(), targets, 6)
    exact = torch.nn.functional.one_hot(targets, 6).float() - torch.softmax(logits, dim=1)
    assert torch.allclose(dense(index, coefficient, 6), exact, atol=1e-6)


def test_a_diverged_row_does_not_stop_the_estimate_with_an_error() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [float("nan"), 0.0, 1.0, 2.0], [float("inf"), 0.0, 0.0, 0.0]])
    index, coefficient = sparse_softmax_gradient(logits, torch.tensor([0, 1, 2]), 1)
    assert index.shape == (3, 3)
    assert torch.isfinite(coefficient[0]).all()  # the healthy row keeps its estimate


def test_gathered_sum_matches_a_dense_product_across_chunks() -> None:
    generator = torch.Generator().manual_seed(2)
    table = torch.randn(7, 3, generator=generator)
    index = torch.randint(0, 7, (300, 4), generator=generator)  # more positions than one chunk
    coefficient = torch.randn(300, 4, generator=generator)
    expected = dense(index, coefficient, 7) @ table
    assert torch.allclose(gathered_sum(coefficient, table, index), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("with_lookups", "residual", "keeps"),
    [(False, False, False), (True, False, False), (True, True, False), (True, True, True)],
)
def test_the_sampled_head_keeping_every_token_equals_the_exact_head(
    with_lookups: bool, residual: bool, keeps: bool
) -> None:
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(9, 4, generator=generator)
    mask = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    table = torch.randn(3, 4, generator=generator)
    lookups = [Lookup(table, torch.tensor([2, 0, 2, -1, 1]))] if with_lookups else []
    grads = []
    for head in ("exact", "sampled"):
        kept = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool) if keeps else None  # rows the map leaves
        affine = AffineRows(weight.clone(), mask, lookups, residual=residual, kept=kept)
        with torch.no_grad():
            affine.A.add_(0.1 * torch.randn(affine.A.shape, generator=torch.Generator().manual_seed(4)))
            affine.b.fill_(0.3)
            if affine.delta is not None:
                affine.delta.copy_(torch.randn(affine.delta.shape, generator=torch.Generator().manual_seed(7)))
        affine.materialize()
        affine.start_step(torch.tensor([1, 4, 8]))  # the residuals of three of the five mapped rows train
        hidden = torch.randn(5, 4, generator=torch.Generator().manual_seed(5), requires_grad=True)
        targets = torch.tensor([1, 3, 2, 7, 0])
        if head == "exact":
            logits = AffineHead.apply(hidden, affine.weight, affine.A, affine.b, affine, affine.step_delta)
            scored = token_log_probs(logits, targets)
        else:
            arguments = (affine.A, affine.b, affine, targets, 9, None, affine.step_delta)
            scored = SampledAffineHead.apply(hidden, affine.weight, *arguments)
        (-(scored * torch.arange(1.0, 6.0)).sum()).backward()  # unequal weights per position
        residual_grad = affine.step_delta.grad if affine.step_delta is not None else torch.zeros(())
        assert not residual or (residual_grad is not None and residual_grad.shape == (3, 4))
        grads.append((scored.detach(), hidden.grad, affine.A.grad, affine.b.grad, residual_grad))
        offsets = affine.delta.detach() if affine.delta is not None else 0.0
        mapped = features(affine, lookups) @ affine.A.detach().T + affine.b.detach()
        if kept is not None:
            mapped = torch.where(affine.follows.unsqueeze(1), mapped, weight[mask])
        assert torch.allclose(affine.weight[mask], mapped + offsets, atol=1e-5)
    for exact, sampled in zip(*grads, strict=True):
        assert sampled is not None and exact is not None
        assert torch.allclose(sampled, exact, atol=1e-5)


def test_scattered_rows_match_a_dense_product() -> None:
    generator = torch.Generator().manual_seed(8)
    position = torch.randint(-1, 5, (6, 3), generator=generator)
    coefficient = torch.randn(6, 3, generator=generator)
    hidden = torch.randn(6, 4, generator=generator)
    per_row = torch.zeros(6, 6).scatter_add_(1, position + 1, coefficient)[:, 1:]  # [T, rows], -1 dropped
    assert torch.allclose(scattered_rows(coefficient, position, hidden, 5), per_row.T @ hidden, atol=1e-5)


def test_sampled_head_gradients_average_to_the_exact_ones() -> None:
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(30, 4, generator=generator)
    mask = torch.arange(30) >= 6
    affine = AffineRows(weight, mask)
    hidden = torch.randn(8, 4, generator=generator, requires_grad=True)
    targets = torch.randint(0, 30, (8,), generator=generator)
    token_log_probs(AffineHead.apply(hidden, affine.weight, affine.A, affine.b, affine), targets).sum().backward()
    assert affine.A.grad is not None and hidden.grad is not None
    exact_A, exact_hidden = affine.A.grad.clone(), hidden.grad.clone()
    total_A, total_hidden = torch.zeros_like(exact_A), torch.zeros_like(exact_hidden)
    runs = 2000
    for _ in range(runs):
        affine.A.grad, hidden.grad = None, None
        scored = SampledAffineHead.apply(hidden, affine.weight, affine.A, affine.b, affine, targets, 2, generator)
        scored.sum().backward()
        total_A += affine.A.grad
        total_hidden += hidden.grad
    scale = float(np.abs(exact_A.numpy()).max())
    assert torch.allclose(total_A / runs, exact_A, atol=0.03 * scale)
    assert torch.allclose(total_hidden / runs, exact_hidden, atol=0.03 * float(exact_hidden.abs().max()))


def test_the_trainer_heals_through_the_sampled_head_and_moves_only_mapped_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exact_head(*args: object) -> None:
        raise AssertionError("the exact head ran although --gradient-samples asks for the sampled one")

    monkeypatch.setattr(trainer_module.AffineHead, "apply", exact_head)
    model = tiny_llama(200)
    weight = model.get_input_embeddings().weight
    before = weight.detach().clone()
    mask = torch.arange(200) >= 40
    options = HealOptions(learning_rate=1e-2, map_learning_rate=1e-2, warmup_steps=0, gradient_samples=8)
    trainer = _Trainer(model, SimpleNamespace(bos_token_id=None), None, None, _Trainable([weight], mask), options)
    ids = np.array([1, 52, 53, 5, 52, 130, 2, 53, 61, 61, 7])
    batch = [Sequence(0, ids, np.arange(1, len(ids) + 1), "x" * len(ids))]
    losses = [trainer._step(batch) for _ in range(6)]
    assert losses[-1] < losses[0]
    assert torch.equal(weight.detach()[~mask], before[~mask])
    assert (weight.detach()[mask] != before[mask]).any(dim=1).all()
