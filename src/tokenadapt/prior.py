"""Prior calibration: move each estimated row's mean logit to what its frequency rank predicts.

Why. In a tied model every estimated row is also an output row. The hybrid estimate of a long, rare token is a mix
of its pieces' rows, so its mean logit is about that of a common piece: far too high. Measured on SmolLM2-135M
moved onto Qwen2: shared tokens treated as new (estimated from their merge parents) come out 1.8 nats above their
true mean logit, and on German text the transplant puts 51% of its probability on new tokens where 29% of the
targets are new, whether or not the target is one. The paper's heuristic knows nothing of how common a token is;
the new tokenizer does (BPE learns frequent merges first) and so does the model (its rows for the shared tokens).

How, without text:

1. The model samples `samples` x `length` tokens from its own start token. Their final hidden states h [n, d] give
   the mean m (a row e's mean logit is m . e) and a direction u = (C + ridge tr(C)/d I)^-1 m, scaled so that
   mean(h . u) = 1: adding s u to a row raises its logit by about s in every context (h . u varies by ~0.1).
2. On the shared tokens, fit m . e ~ a + b log(1 + rank), rank = the new tokenizer's frequency order (merge order
   for BPE and WordPiece ids, score order for a unigram model). Where the fit does not find later ranks to mean
   lower priors (r > -MIN_CORRELATION) nothing moves: a vocabulary in arbitrary order says nothing about frequency.
3. Each estimated row moves by weight x (a + b log(1 + rank) - m . e) along u.

The shift is one scalar per row times one direction, so it applies to any column block of the estimate:

    >>> plan = plan_prior(statistics, estimated_priors, estimated_ranks, shared_priors, shared_ranks, 0.5)
    >>> rows[:, a:b] += plan.block(a, b)          # rows: the [U, d] estimates, any column block a:b
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenadapt.vocab import Vocabulary

SAMPLES = 32  # sequences the model writes from its start token
LENGTH = 24  # tokens each: 768 states; 2048 moved SmolLM2 -> Qwen2 by 0.001 bits-per-byte ratio, at 2.3x the time
TOP_P = 0.95
RIDGE = 0.1  # of the mean hidden variance: keeps u from chasing the sample's smallest directions
MIN_CORRELATION = 0.15  # -r (log rank vs the shared tokens' prior) below which the fit is not trusted
MIN_SHARED = 100  # shared tokens the fit needs


@dataclass(frozen=True)
class HiddenStatistics:
    """Mean `mean` [d] of the model's final hidden states, and `direction` [d] with mean(h . direction) = 1.

    `spread` is the standard deviation of h . direction over the sample (how constant the logit shift is).
    """

    mean: torch.Tensor
    direction: torch.Tensor
    spread: float
    tokens: int


@dataclass(frozen=True)
class PriorFit:
    """prior ~ intercept + slope log(1 + rank) over `shared` shared tokens, with correlation `r`."""

    intercept: float
    slope: float
    r: float
    shared: int

    def predict(self, ranks: torch.Tensor) -> torch.Tensor:
        return self.intercept + self.slope * torch.log1p(ranks.to(torch.float32))


@dataclass(frozen=True)
class PriorPlan:
    """Per estimated row (in `new_ids` order) a logit shift `shift` [U], applied along `direction` [d]."""

    shift: torch.Tensor
    direction: torch.Tensor
    report: dict[str, Any] = field(default_factory=dict)

    def block(self, start: int, stop: int) -> torch.Tensor:
        """The [U, stop - start] addition for columns start:stop of the estimated rows."""
        return self.shift[:, None] * self.direction[None, start:stop]


@torch.inference_mode()
def sample_hidden_states(
    model: Any, start_id: int, samples: int = SAMPLES, length: int = LENGTH, seed: int = 0, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [samples, length + 1], hidden [samples * length, d]): `length` tokens the model samples (top-p)
    after `start_id`, and the final hidden state that predicted each of them (position-major: row i * samples + b
    is sequence b's state at position i).

    These are the states the head reads in ordinary use. Deterministic for a seed (sampling has its own generator).
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.full((samples, 1), int(start_id), dtype=torch.long)
    # transformers 5.x renamed past_key_values to cache; accept either
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = None
    states: list[torch.Tensor] = []
    for _ in tqdm(range(length), desc="prior samples", unit="tok", disable=not progress):
        out = model(input_ids=tokens[:, -1:], use_cache=True, output_hidden_states=True, **{cache_name: cache})
        cache = getattr(out, cache_name, None)
        states.append(out.hidden_states[-1][:, -1].float())
        tokens = torch.cat([tokens, _top_p_sample(out.logits[:, -1].float(), TOP_P, generator)[:, None]], dim=1)
    return tokens, torch.cat(states)


def _top_p_sample(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row [B] from the smallest set of tokens holding `top_p` of the probability."""
    probs = logits.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(1, choice)[:, 0]


def hidden_statistics(hidden: torch.Tensor, ridge: float = RIDGE) -> HiddenStatistics:
    """Mean and constant-logit direction of hidden states [n, d].

    >>> h = torch.randn(500, 8) + 3.0
    >>> stats = hidden_statistics(h)
    >>> float((h @ stats.direction).mean())   # 1.0
    """
    hidden = hidden.to(torch.float32)
    mean = hidden.mean(dim=0)
    centred = hidden - mean
    covariance = centred.T @ centred / max(hidden.shape[0] - 1, 1)
    scale = float(covariance.diagonal().mean()) or 1.0
    eye = torch.eye(hidden.shape[1], dtype=torch.float32)
    direction = torch.linalg.solve(covariance + ridge * scale * eye, mean)
    projected = hidden @ direction
    level = float(projected.mean())
    if not math.isfinite(level) or abs(level) < 1e-12:
        direction = mean / max(float(mean @ mean), 1e-12)  # degenerate sample: fall back to the mean itself
        projected = hidden @ direction
        level = float(projected.mean()) or 1.0
    direction = direction / level
    return HiddenStatistics(mean, direction, float((projected / level).std()), int(hidden.shape[0]))


def fit_prior(priors: torch.Tensor, ranks: torch.Tensor) -> PriorFit:
    """Least squares prior ~ a + b log(1 + rank) over the given tokens (both [S]).

    >>> fit = fit_prior(10 - torch.log1p(torch.arange(200.0)), torch.arange(200))
    >>> round(fit.intercept, 3), round(fit.slope, 3), round(fit.r, 3)
    (10.0, -1.0, -1.0)
    """
    x = torch.log1p(ranks.to(torch.float64))
    y = priors.to(torch.float64)
    if x.numel() < 2 or float(x.std()) == 0.0 or float(y.std()) == 0.0:
        return PriorFit(float(y.mean()) if y.numel() else 0.0, 0.0, 0.0, int(x.numel()))
    xc, yc = x - x.mean(), y - y.mean()
    slope = float((xc * yc).sum() / (xc * xc).sum())
    r = float((xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum()))
    return PriorFit(float(y.mean()) - slope * float(x.mean()), slope, r, int(x.numel()))


def frequency_ranks(vocab: Vocabulary) -> np.ndarray:
    """[size] rank of each id in the tokenizer's own frequency order (0 = most frequent).

    A unigram model (SentencePiece) orders by its log-probability scores; BPE and WordPiece vocabularies are
    stored in the order they were learned, so the id is the rank.
    """
    ranks = np.arange(vocab.size, dtype=np.int64)
    if vocab.unigram_scores is not None:
        scores = np.full(vocab.size, -np.inf)
        known = vocab.unigram_scores[: vocab.size]
        scores[: len(known)] = known
        order = np.argsort(-scores, kind="stable")
        ranks[order] = np.arange(vocab.size)
    return ranks


def plan_prior(
    statistics: HiddenStatistics,
    estimated_priors: torch.Tensor,
    estimated_ranks: torch.Tensor,
    shared_priors: torch.Tensor,
    shared_ranks: torch.Tensor,
    weight: float,
) -> PriorPlan:
    """The shift of each estimated row: weight x (predicted - estimated prior), or zero where rank predicts nothing.

    `estimated_priors` [U] are m . e of the method's rows (computable before the rows: the methods are linear
    in the old rows), `estimated_ranks` [U] their frequency ranks; `shared_priors`, `shared_ranks` [S] the same
    for the shared tokens the fit learns from.
    """
    fit = fit_prior(shared_priors, shared_ranks)
    report: dict[str, Any] = {
        "weight": weight,
        "sample_tokens": statistics.tokens,
        "direction_spread": round(statistics.spread, 4),
        "fit": {"intercept": round(fit.intercept, 4), "slope": round(fit.slope, 4), "r": round(fit.r, 4)},
        "shared_tokens": fit.shared,
    }
    zero = torch.zeros_like(estimated_priors, dtype=torch.float32)
    if fit.shared < MIN_SHARED or fit.r > -MIN_CORRELATION:
        report["applied"] = False
        report["reason"] = (
            f"only {fit.shared} shared tokens to learn from (needs {MIN_SHARED})"
            if fit.shared < MIN_SHARED
            else f"the new tokenizer's order does not predict the shared tokens' priors (r = {fit.r:.2f})"
        )
        return PriorPlan(zero, statistics.direction, report)
    shift = weight * (fit.predict(estimated_ranks) - estimated_priors.to(torch.float32))
    report["applied"] = True
    report["mean_shift"] = round(float(shift.mean()), 4) if shift.numel() else 0.0
    report["estimated_prior_mean"] = round(float(estimated_priors.float().mean()), 4) if shift.numel() else 0.0
    return PriorPlan(shift.to(torch.float32), statistics.direction, report)
