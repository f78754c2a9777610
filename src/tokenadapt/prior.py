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
2. On the shared tokens, fit m . e ~ a_c + b_c log(1 + rank) + l log(bytes), rank = the new tokenizer's frequency
   order (merge order for BPE and WordPiece ids, score order for a unigram model), c the token's class (a word
   start in a spaced script, a word middle, punctuation, other: `prior_classes`; `--prior-fit form`), each token
   weighted by its Zipf share of text, 1 / (1 + rank). A word middle gets lower logits than a word start of the
   same rank, which a single line through all tokens averages away. That single line, a + b log(1 + rank), is
   `--prior-fit rank`, and it stays for the unspaced scripts (CJK, kana, Hangul) and for small classes.
   Where the new tokenizer's order does not predict the shared tokens' priors (r > -MIN_CORRELATION for the
   single line) nothing moves: a vocabulary in arbitrary order says nothing about frequency.
3. Each estimated row moves by weight x (prediction - m . e) along u.

The shift is one scalar per row times one direction, so it applies to any column block of the estimate:

    >>> features = token_features(new_vocab)                  # rank, byte length, class of every new token
    >>> plan = plan_prior(statistics, estimated_priors, features.subset(new_ids), shared_priors,
    ...                   features.subset(shared_ids), weight=0.5, fit="form")
    >>> rows[:, a:b] += plan.block(a, b)          # rows: the [U, d] estimates, any column block a:b
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenadapt.vocab import Vocabulary

SAMPLES = 32  # sequences the model writes from its start token
LENGTH = 24  # tokens each: 768 states; 2048 moved SmolLM2 -> Qwen2 by 0.001 bits-per-byte ratio, at 2.3x the time
TOP_P = 0.95
NUCLEUS_PEEK = 8192  # tokens sorted per sampling step (SmolLM2-135M: 3 of its 24 steps have a wider nucleus)
RIDGE = 0.1  # of the mean hidden variance: keeps u from chasing the sample's smallest directions
MIN_CORRELATION = 0.15  # -r (log rank vs the shared tokens' prior) below which the fit is not trusted
MIN_SHARED = 100  # shared tokens the fit needs
MIN_CLASS_SHARED = 200  # shared tokens a class needs for a line of its own; smaller classes keep the rank line
PRIOR_CLASSES = ("word start", "word middle", "punctuation", "other", "unspaced script")
# from U+2E80 on (CJK, kana, Hangul) scripts are written without spaces: no word starts to tell apart
SPACED_SCRIPTS_END = 0x2E80
UNSPACED = PRIOR_CLASSES.index("unspaced script")  # always on the rank line (see fit_prior_model)


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
    """One token per row [B] from the smallest set of tokens holding `top_p` of the probability.

    Sorting whole rows was half the prior's time; a nucleus is rarely wider than NUCLEUS_PEEK tokens, so only the
    top NUCLEUS_PEEK are sorted unless some row's nucleus needs more, and the draw looks at the nucleus alone.
    """
    probs = logits.softmax(dim=-1)
    sorted_probs, order = probs.topk(min(NUCLEUS_PEEK, probs.shape[-1]), dim=-1)
    if sorted_probs.shape[-1] < probs.shape[-1] and bool((sorted_probs.sum(dim=-1) <= top_p).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # a nucleus wider than the peek
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    width = int((~outside).sum(dim=-1).max())  # the widest nucleus of the rows
    nucleus = sorted_probs[:, :width].masked_fill(outside[:, :width], 0.0)
    choice = torch.multinomial(nucleus, 1, generator=generator)
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


def prior_classes(canonical: Sequence[bytes | None]) -> np.ndarray:
    """[V] int64 class of each token for the prior fit, an index into PRIOR_CLASSES.

    The class is read from the first character after one optional leading space: a letter of a spaced script is a
    word start (0) with the space and a word middle (1) without; other characters that are no digit and no
    whitespace are punctuation (2), leading space or not; any character from U+2E80 on (CJK, kana, Hangul and
    their punctuation) is an unspaced script (4); the rest (digits, whitespace, partial UTF-8, no bytes) is other
    (3).

    >>> prior_classes([b" The", b"ing", b".\\n", b" (", "日本".encode(), b"\\xe6", b"42", b"\\n", None]).tolist()
    [0, 1, 2, 2, 4, 3, 3, 3, 3]
    """
    classes = np.full(len(canonical), 3, dtype=np.int64)
    for token_id, data in enumerate(canonical):
        if not data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        word_start = text.startswith(" ") and len(text) > 1
        first = text[1] if word_start else text[0]
        if ord(first) >= SPACED_SCRIPTS_END:
            classes[token_id] = UNSPACED
        elif first.isalpha():
            classes[token_id] = 0 if word_start else 1
        elif not (first.isdigit() or first.isspace()):
            classes[token_id] = 2
    return classes


@dataclass(frozen=True)
class TokenFeatures:
    """What the prior fit reads of each token, all [N]: frequency rank, canonical byte length, class."""

    ranks: torch.Tensor
    lengths: torch.Tensor
    classes: torch.Tensor

    def subset(self, ids: np.ndarray | torch.Tensor) -> TokenFeatures:
        index = torch.as_tensor(ids, dtype=torch.long)
        return TokenFeatures(self.ranks[index], self.lengths[index], self.classes[index])


def token_features(vocab: Vocabulary) -> TokenFeatures:
    """The prior fit's features of every token of `vocab` ([size] each)."""
    return TokenFeatures(
        ranks=torch.from_numpy(frequency_ranks(vocab)),
        lengths=torch.from_numpy(vocab.byte_lengths),
        classes=torch.from_numpy(prior_classes(vocab.canonical[: vocab.size])),
    )


@dataclass(frozen=True)
class PriorModel:
    """prior ~ intercept[c] + slope[c] log(1 + rank) + length_slope (log(bytes) - length_centre), c a token's class.

    Only classes with a line of their own (`fitted[c]`) read length; every other token is predicted by the rank
    line `intercept[-1]` + `slope[-1]` log(1 + rank) through all shared tokens. Length is centred on the fitted
    shared tokens' mean log length, so a vocabulary of one length leaves it out.
    """

    intercept: tuple[float, ...]  # per class, then the rank line's
    slope: tuple[float, ...]
    length_slope: float
    length_centre: float
    fitted: tuple[bool, ...]  # per class: has a line of its own
    shared: tuple[int, ...]  # per class: shared tokens

    def predict(self, features: TokenFeatures) -> torch.Tensor:
        """[N] predicted prior of tokens with these features."""
        x = torch.log1p(features.ranks.to(torch.float64))
        size = torch.log(features.lengths.clamp(min=1).to(torch.float64)) - self.length_centre
        own = torch.tensor(self.fitted, dtype=torch.bool)[features.classes]
        group = torch.where(own, features.classes, torch.full_like(features.classes, len(self.fitted)))
        intercept = torch.tensor(self.intercept, dtype=torch.float64)[group]
        slope = torch.tensor(self.slope, dtype=torch.float64)[group]
        return (intercept + slope * x + own * self.length_slope * size).to(torch.float32)


def fit_prior_model(priors: torch.Tensor, features: TokenFeatures) -> PriorModel:
    """Least squares `PriorModel` of the shared tokens' priors [S] on their features.

    Each class with MIN_CLASS_SHARED shared tokens gets a line on log rank, and all of them one slope on log byte
    length, fitted together by least squares weighted by 1 / (1 + rank): Zipf's law's share of text for a token
    of that rank, so the tokens a text shows decide the lines, not the long tail of rare ones (Gemma-3's thousands
    of code-art tokens such as " +#+#+#+#+#+" would drag its punctuation line 3 nats below the priors of the
    brackets and operators that code uses). The unspaced scripts never get a line: a vocabulary extended with
    them (Llama-3's 28k tokens appended to cl100k) ranks them by when they were added, not how common they are,
    and a hundred shared CJK tokens are too few to learn that from (docs/design.md). They and the small classes
    keep the rank line.

    >>> ranks = torch.arange(1000)
    >>> classes = torch.arange(1000) % 2                      # word starts and word middles, alternating
    >>> priors = 10 - torch.log1p(ranks.double()) - 3.0 * classes   # middles 3 nats lower at every rank
    >>> model = fit_prior_model(priors, TokenFeatures(ranks, torch.full((1000,), 4), classes))
    >>> [round(v, 3) for v in model.intercept[:2]], [round(v, 3) for v in model.slope[:2]]
    ([10.0, 7.0], [-1.0, -1.0])
    """
    count = len(PRIOR_CLASSES)
    shared = tuple(int((features.classes == c).sum()) for c in range(count))
    fitted = tuple(n >= MIN_CLASS_SHARED and c != UNSPACED for c, n in enumerate(shared))
    line = fit_prior(priors, features.ranks)
    intercept, slope = [math.nan] * count + [line.intercept], [math.nan] * count + [line.slope]
    groups = [c for c in range(count) if fitted[c]]
    rows = torch.isin(features.classes, torch.tensor(groups, dtype=features.classes.dtype))
    size = torch.log(features.lengths[rows].clamp(min=1).to(torch.float64))
    centre = float(size.mean()) if size.numel() else 0.0
    length_slope = 0.0
    if groups:
        x = torch.log1p(features.ranks[rows].to(torch.float64))
        columns = []
        for c in groups:
            member = (features.classes[rows] == c).to(torch.float64)
            columns += [member, member * x]
        root_weight = torch.rsqrt(1.0 + features.ranks[rows].to(torch.float64))  # weight 1 / (1 + rank)
        design = torch.stack([*columns, size - centre], dim=1) * root_weight[:, None]
        solution = _least_squares(design, priors[rows].to(torch.float64) * root_weight)
        for position, c in enumerate(groups):
            intercept[c], slope[c] = solution[2 * position], solution[2 * position + 1]
        length_slope = solution[-1]
    return PriorModel(tuple(intercept), tuple(slope), length_slope, centre, fitted, shared)


def _least_squares(design: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Coefficients [k] of the least-squares fit design [n, k] @ c ~ target [n] (minimum norm where degenerate)."""
    if design.shape[0] == 0:
        return [0.0] * design.shape[1]
    return [float(v) for v in torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]]


def plan_prior(
    statistics: HiddenStatistics,
    estimated_priors: torch.Tensor,
    estimated: TokenFeatures,
    shared_priors: torch.Tensor,
    shared: TokenFeatures,
    weight: float,
    fit: str = "form",
) -> PriorPlan:
    """The shift of each estimated row: weight x (predicted - estimated prior), or zero where rank predicts nothing.

    `estimated_priors` [U] are m . e of the method's rows (computable before the rows: the methods are linear
    in the old rows), `estimated` their features; `shared_priors` [S] and `shared` the same for the shared
    tokens the fit learns from. `fit` is "form" (a line per token class, plus byte length) or "rank" (one line).
    """
    line = fit_prior(shared_priors, shared.ranks)
    report: dict[str, Any] = {
        "weight": weight,
        "sample_tokens": statistics.tokens,
        "direction_spread": round(statistics.spread, 4),
        "fit": {"intercept": round(line.intercept, 4), "slope": round(line.slope, 4), "r": round(line.r, 4)},
        "shared_tokens": line.shared,
        "prior_fit": fit,
    }
    zero = torch.zeros_like(estimated_priors, dtype=torch.float32)
    if line.shared < MIN_SHARED or line.r > -MIN_CORRELATION:
        report["applied"] = False
        report["reason"] = (
            f"only {line.shared} shared tokens to learn from (needs {MIN_SHARED})"
            if line.shared < MIN_SHARED
            else f"the new tokenizer's order does not predict the shared tokens' priors (r = {line.r:.2f})"
        )
        return PriorPlan(zero, statistics.direction, report)
    if fit == "rank":
        prediction, fitted_shared = line.predict(estimated.ranks), line.predict(shared.ranks)
    else:
        model = fit_prior_model(shared_priors, shared)
        prediction, fitted_shared = model.predict(estimated), model.predict(shared)
        report["classes"] = {
            name: {
                "shared": model.shared[c],
                "estimated": int((estimated.classes == c).sum()),
                "line": (
                    {"intercept": round(model.intercept[c], 4), "slope": round(model.slope[c], 4)}
                    if model.fitted[c]
                    else "rank line"
                ),
            }
            for c, name in enumerate(PRIOR_CLASSES)
        }
        report["length_slope"] = round(model.length_slope, 4)
    residual = shared_priors.to(torch.float32) - fitted_shared
    report["residual_std"] = round(float(residual.std()), 4) if residual.numel() > 1 else 0.0
    shift = weight * (prediction - estimated_priors.to(torch.float32))
    report["applied"] = True
    report["mean_shift"] = round(float(shift.mean()), 4) if shift.numel() else 0.0
    report["estimated_prior_mean"] = round(float(estimated_priors.float().mean()), 4) if shift.numel() else 0.0
    return PriorPlan(shift.to(torch.float32), statistics.direction, report)
