"""Healing objectives as pure functions on tensors: next-token loss, and likelihood matching across tokenizations.

Distillation compares a student and a teacher whose tokenizers differ, so their per-token probabilities cannot be
compared one to one. They can be compared on *chunks*: stretches of text that end where both tokenizations end a
token. The log-likelihood a model gives a chunk is the sum of its tokens' log-probabilities, and both models
assign one to every chunk (approximate likelihood matching, Minixhofer et al. 2025). The loss is the binary KL
divergence between the teacher's and the student's probability of each chunk.

    >>> student_ends, teacher_ends = np.array([2, 5, 9]), np.array([5, 7, 9])
    >>> common_boundaries(student_ends, teacher_ends)
    array([5, 9])
    >>> chunk_ids(student_ends, np.array([5, 9]))
    array([0, 0, 1])
"""

from __future__ import annotations

import numpy as np
import torch

# log(1 - p) is -inf at p = 1; a chunk log-likelihood is kept at most this far below 0 to stay finite.
_MAX_LOG_LIKELIHOOD = -1e-6


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target under the logits: logits [T, V], targets [T] -> [T] (float32)."""
    return -torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def common_boundaries(student_ends: np.ndarray, teacher_ends: np.ndarray) -> np.ndarray:
    """Byte offsets at which both tokenizations end a token, ascending: [S], [T] -> [C]."""
    return np.intersect1d(student_ends, teacher_ends)


def chunk_ids(token_ends: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """For each token (by the byte offset where it ends), the index of the chunk holding it: [T] -> [T].

    Chunk c covers the bytes (boundaries[c-1], boundaries[c]]; tokens past the last boundary get len(boundaries).
    """
    return np.searchsorted(boundaries, token_ends, side="left")


def chunk_log_likelihoods(token_log_prob: torch.Tensor, chunks: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Sum of token log-probabilities per chunk: [T] float, [T] long chunk ids -> [n_chunks]."""
    totals = torch.zeros(n_chunks, dtype=token_log_prob.dtype, device=token_log_prob.device)
    return totals.index_add(0, chunks, token_log_prob)


def binary_kl(teacher_ll: torch.Tensor, student_ll: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(p_t) || Bernoulli(p_s)) per chunk, from log-likelihoods [C], [C] -> [C] (nats, >= 0).

    >>> binary_kl(torch.tensor([-0.1]), torch.tensor([-0.1])).item()
    0.0
    """
    teacher_ll = teacher_ll.clamp(max=_MAX_LOG_LIKELIHOOD)
    student_ll = student_ll.clamp(max=_MAX_LOG_LIKELIHOOD)
    p_teacher = teacher_ll.exp()
    teacher_miss = torch.log(-torch.expm1(teacher_ll))  # log(1 - p_t)
    student_miss = torch.log(-torch.expm1(student_ll))
    return p_teacher * (teacher_ll - student_ll) + (1 - p_teacher) * (teacher_miss - student_miss)


def chunk_distillation_terms(
    student_log_prob: torch.Tensor,
    student_ends: np.ndarray,
    teacher_log_prob: torch.Tensor,
    teacher_ends: np.ndarray,
) -> torch.Tensor:
    """Binary KL per shared chunk of one text span, both sides scored on the same bytes: -> [C - 1].

    `*_log_prob[i]` is the log-probability of token i, which ends at byte `*_ends[i]` (relative to the span).
    Token 0 of a side without bos has no prediction: pass its log-probability as 0 and it is dropped with the
    first chunk, which is never compared.
    """
    boundaries = common_boundaries(student_ends, teacher_ends)
    if len(boundaries) < 2:
        return student_log_prob.new_zeros(0)
    n = len(boundaries)
    student_chunks = torch.from_numpy(chunk_ids(student_ends, boundaries)).clamp(max=n - 1)
    teacher_chunks = torch.from_numpy(chunk_ids(teacher_ends, boundaries)).clamp(max=n - 1)
    student_ll = chunk_log_likelihoods(student_log_prob, student_chunks, n)
    teacher_ll = chunk_log_likelihoods(teacher_log_prob.to(student_log_prob.dtype), teacher_chunks, n)
    return binary_kl(teacher_ll[1:], student_ll[1:])
