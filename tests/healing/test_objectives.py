"""Healing objectives: chunk alignment across two tokenizations and the binary KL, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenadapt.healing.objectives import (
    binary_kl,
    chunk_distillation_terms,
    chunk_ids,
    chunk_log_likelihoods,
    common_boundaries,
    token_log_probs,
)


def test_chunks_split_at_shared_boundaries() -> None:
    # "hello world": student "hel|lo| world" ends 3,5,11; teacher "hello| wor|ld" ends 5,9,11
    student, teacher = np.array([3, 5, 11]), np.array([5, 9, 11])
    boundaries = common_boundaries(student, teacher)
    assert boundaries.tolist() == [5, 11]
    assert chunk_ids(student, boundaries).tolist() == [0, 0, 1]
    assert chunk_ids(teacher, boundaries).tolist() == [0, 1, 1]


def test_chunk_log_likelihoods_sum_their_tokens() -> None:
    log_probs = torch.tensor([-1.0, -2.0, -0.5, -0.25])
    totals = chunk_log_likelihoods(log_probs, torch.tensor([0, 0, 1, 2]), 3)
    assert totals.tolist() == [-3.0, -0.5, -0.25]


def test_binary_kl_matches_the_formula_and_is_zero_only_at_equality() -> None:
    p_t, p_s = 0.6, 0.3
    expected = p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s))
    value = binary_kl(torch.tensor([math.log(p_t)]), torch.tensor([math.log(p_s)]))
    assert value.item() == pytest.approx(expected, rel=1e-5)
    same = binary_kl(torch.tensor([-0.3, -5.0]), torch.tensor([-0.3, -5.0]))
    assert torch.allclose(same, torch.zeros(2), atol=1e-7)
    assert binary_kl(torch.tensor([0.0]), torch.tensor([-20.0])).isfinite().all()  # p_t = 1 stays finite


def test_distillation_terms_vanish_when_both_sides_agree_on_every_chunk() -> None:
    student_ends, teacher_ends = np.array([3, 5, 11]), np.array([5, 9, 11])
    student_lp = torch.tensor([0.0, -1.0, -2.0], requires_grad=True)  # token 0 unpredicted: first chunk dropped
    teacher_lp = torch.tensor([0.0, -1.5, -0.5])  # chunk 1: teacher -2.0 = student -2.0
    terms = chunk_distillation_terms(student_lp, student_ends, teacher_lp, teacher_ends)
    assert terms.shape == (1,)
    assert terms.item() == pytest.approx(0.0, abs=1e-6)
    worse = chunk_distillation_terms(student_lp - 1.0, student_ends, teacher_lp, teacher_ends)
    assert worse.item() > 0
    worse.sum().backward()
    assert student_lp.grad is not None and student_lp.grad[2] < 0  # raising the student's chunk lowers the loss


def test_token_log_probs_is_log_softmax_at_the_targets() -> None:
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 6, 2, 2])
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(5), targets]
    assert torch.allclose(token_log_probs(logits, targets), expected, atol=1e-6)
