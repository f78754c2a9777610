"""Prior calibration (tokenadapt.prior): hidden statistics, the rank fit, the shift, and its place in a transplant."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tests.conftest import CORPUS, tiny_llama
from tokenadapt import prior
from tokenadapt.errors import InputError
from tokenadapt.options import TransplantOptions
from tokenadapt.prior import (
    MIN_CLASS_SHARED,
    PRIOR_CLASSES,
    HiddenStatistics,
    TokenFeatures,
    fit_prior,
    fit_prior_model,
    frequency_ranks,
    hidden_statistics,
    plan_prior,
    prior_classes,
    sample_hidden_states,
    token_features,
)
from tokenadapt.transplant import REPORT_NAME, TransplantResult, transplant
from tokenadapt.vocab import align_vocabularies, build_vocabulary


def test_hidden_statistics_match_a_numpy_reference_and_shift_every_logit_alike() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2000, 6, generator=generator) * torch.tensor([1.0, 1.0, 1.0, 0.1, 0.1, 5.0]) + 2.0
    stats = hidden_statistics(hidden, ridge=0.1)

    h = hidden.double().numpy()
    mean = h.mean(0)
    covariance = np.cov(h.T)
    reference = np.linalg.solve(covariance + 0.1 * covariance.diagonal().mean() * np.eye(6), mean)
    reference /= (h @ reference).mean()
    np.testing.assert_allclose(stats.direction.numpy(), reference, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=1e-5)

    shifts = hidden @ stats.direction
    assert float(shifts.mean()) == pytest.approx(1.0, abs=1e-5)
    # the point of the direction: a far steadier shift than along the mean itself
    along_mean = hidden @ (stats.mean / (stats.mean @ stats.mean))
    assert stats.spread == pytest.approx(float(shifts.std()), rel=1e-4)
    assert stats.spread < 0.5 * float(along_mean.std())
    assert stats.tokens == 2000


def test_fit_prior_recovers_a_log_rank_line() -> None:
    ranks = torch.arange(500)
    fit = fit_prior(12.0 - 0.75 * torch.log1p(ranks.double()), ranks)
    assert (fit.intercept, fit.slope, fit.r, fit.shared) == (
        pytest.approx(12.0),
        pytest.approx(-0.75),
        pytest.approx(-1.0),
        500,
    )
    assert torch.allclose(fit.predict(torch.tensor([0, 9])), torch.tensor([12.0, 12.0 - 0.75 * float(np.log(10.0))]))
    flat = fit_prior(torch.full((10,), 3.0), torch.arange(10))
    assert (flat.slope, flat.r, flat.intercept) == (0.0, 0.0, 3.0)


def _statistics(d: int = 4) -> HiddenStatistics:
    return HiddenStatistics(torch.ones(d), torch.arange(d, dtype=torch.float32), 0.05, 100)


def _features(ranks: torch.Tensor, classes: torch.Tensor | None = None, lengths: torch.Tensor | None = None):
    return TokenFeatures(
        ranks,
        lengths if lengths is not None else torch.full_like(ranks, 3),
        classes if classes is not None else torch.zeros_like(ranks),
    )


@pytest.mark.parametrize("fit", ["rank", "form"])
def test_plan_prior_moves_each_row_a_share_of_the_way_to_its_prediction(fit: str) -> None:
    shared_ranks = torch.arange(300)
    shared_priors = 10.0 - torch.log1p(shared_ranks.float())
    estimated_ranks = torch.tensor([400, 2000])
    estimated_priors = torch.tensor([9.0, 1.0])
    plan = plan_prior(
        _statistics(), estimated_priors, _features(estimated_ranks), shared_priors, _features(shared_ranks), 0.5, fit
    )
    predicted = 10.0 - torch.log1p(estimated_ranks.float())
    assert torch.allclose(plan.shift, 0.5 * (predicted - estimated_priors), atol=1e-4)
    assert plan.report["applied"] and plan.report["fit"]["r"] == pytest.approx(-1.0)
    assert plan.report["prior_fit"] == fit and plan.report["residual_std"] == pytest.approx(0.0, abs=1e-4)
    # one scalar per row along one direction, so any column block is a slice of the same outer product
    assert torch.allclose(plan.block(1, 3), torch.outer(plan.shift, torch.tensor([1.0, 2.0])))


@pytest.mark.parametrize("fit", ["rank", "form"])
def test_plan_prior_moves_nothing_when_rank_says_nothing(fit: str) -> None:
    generator = torch.Generator().manual_seed(0)
    shared_ranks = torch.randperm(300, generator=generator)
    shared_priors = 10.0 - torch.log1p(torch.arange(300).float())  # priors unrelated to these ranks
    one = _features(torch.tensor([400]))
    plan = plan_prior(_statistics(), torch.tensor([9.0]), one, shared_priors, _features(shared_ranks), 0.5, fit)
    assert not plan.report["applied"] and "does not predict" in plan.report["reason"]
    assert torch.equal(plan.shift, torch.zeros(1))
    few = plan_prior(_statistics(), torch.tensor([9.0]), one, shared_priors[:20], _features(torch.arange(20)), 0.5, fit)
    assert not few.report["applied"] and "only 20 shared tokens" in few.report["reason"]


def test_prior_classes_read_the_first_character_after_one_space() -> None:
    tokens = [b" The", b"ing", b" \xc3\xa9t\xc3\xa9", b"\xce\xb1", b".\n", b" (", b"-J", b" ", b"  x", b"42", b" 7"]
    tokens += ["日本".encode(), "。".encode(), b"\xe6\x97", b"\n\n", b"", None]
    names = [PRIOR_CLASSES[c] for c in prior_classes(tokens)]
    expected = ["word start", "word middle", "word start", "word middle", *["punctuation"] * 3, *["other"] * 4]
    expected += [*["unspaced script"] * 2, *["other"] * 4]
    assert names == expected


def test_token_features_of_a_vocabulary(byte_level_tokenizer: PreTrainedTokenizerFast) -> None:
    vocab = build_vocabulary(byte_level_tokenizer)
    features = token_features(vocab)
    assert torch.equal(features.ranks, torch.from_numpy(frequency_ranks(vocab)))
    assert features.lengths.tolist() == [len(data or b"") for data in vocab.canonical[: vocab.size]]
    assert torch.equal(features.classes, torch.from_numpy(prior_classes(vocab.canonical[: vocab.size])))
    picked = features.subset(np.array([5, 2]))
    assert picked.ranks.tolist() == [int(features.ranks[5]), int(features.ranks[2])]


def _class_data(seed: int = 0) -> tuple[torch.Tensor, TokenFeatures, dict[int, tuple[float, float]]]:
    """Shared tokens of every class, each prior on its own log-rank line, plus -0.5 log(bytes) and noise."""
    generator = torch.Generator().manual_seed(seed)
    lines = {0: (18.0, -1.0), 1: (9.5, -0.5), 2: (15.0, -1.0), 3: (13.0, -0.8), 4: (11.0, -0.6)}
    # "other" too small for a line of its own; the unspaced scripts never get one
    counts = [3000, 1500, 400, MIN_CLASS_SHARED - 1, 500]
    classes = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    ranks = torch.randint(0, 100_000, (len(classes),), generator=generator)
    lengths = torch.randint(1, 12, (len(classes),), generator=generator)
    x, size = torch.log1p(ranks.double()), torch.log(lengths.double())
    intercept = torch.tensor([lines[int(c)][0] for c in classes], dtype=torch.float64)
    slope = torch.tensor([lines[int(c)][1] for c in classes], dtype=torch.float64)
    priors = intercept + slope * x - 0.5 * size + 0.01 * torch.randn(len(classes), generator=generator).double()
    return priors, TokenFeatures(ranks, lengths, classes), lines


def test_fit_prior_model_recovers_a_line_per_class_and_a_numpy_reference() -> None:
    priors, features, lines = _class_data()
    model = fit_prior_model(priors, features)
    assert model.fitted == (True, True, True, False, False)
    assert model.shared == (3000, 1500, 400, MIN_CLASS_SHARED - 1, 500)
    for c in range(3):
        # intercepts hold at the fitted tokens' mean log length; take them back to one byte
        assert (model.intercept[c] - model.length_slope * model.length_centre, model.slope[c]) == (
            pytest.approx(lines[c][0], abs=0.03),
            pytest.approx(lines[c][1], abs=0.003),
        )
    assert model.length_slope == pytest.approx(-0.5, abs=0.005)
    fitted_rows = features.classes < 3
    assert model.length_centre == pytest.approx(float(torch.log(features.lengths[fitted_rows].double()).mean()))

    # the other classes keep the rank line: ordinary least squares on log rank over every shared token
    x = np.log1p(features.ranks.double().numpy())
    reference = np.linalg.lstsq(np.stack([np.ones_like(x), x], axis=1), priors.numpy(), rcond=None)[0]
    np.testing.assert_allclose([model.intercept[-1], model.slope[-1]], reference, rtol=1e-6)
    query = TokenFeatures(torch.tensor([10, 10, 10, 50_000]), torch.tensor([4, 4, 9, 2]), torch.tensor([1, 3, 4, 0]))
    expected = [
        lines[1][0] + lines[1][1] * np.log1p(10) - 0.5 * np.log(4),
        reference @ [1.0, np.log1p(10)],  # no length term off the class lines
        reference @ [1.0, np.log1p(10)],
        lines[0][0] + lines[0][1] * np.log1p(50_000) - 0.5 * np.log(2),
    ]
    np.testing.assert_allclose(model.predict(query).numpy(), expected, atol=0.02)


def test_fit_prior_model_weighs_tokens_by_their_zipf_share_as_a_numpy_reference_does() -> None:
    generator = torch.Generator().manual_seed(1)
    # word starts and middles on their lines; punctuation: 300 frequent tokens on its line, and a tail of 2,000 rare
    # ones the model never predicts (code art such as " +#+#+#+#+#+"), 12 nats below it
    ranks = torch.cat([torch.randint(0, 100_000, (600,), generator=generator), torch.arange(300)])
    ranks = torch.cat([ranks, torch.randint(50_000, 100_000, (2000,), generator=generator)])
    classes = torch.cat([torch.zeros(300), torch.ones(300), torch.full((2300,), 2)]).long()
    lengths = torch.randint(1, 10, (2900,), generator=generator)
    lines = torch.tensor([[18.0, -1.0], [9.5, -0.5], [15.0, -1.0]], dtype=torch.float64)[classes]
    priors = lines[:, 0] + lines[:, 1] * torch.log1p(ranks.double()) - 0.5 * torch.log(lengths.double())
    priors[900:] -= 12.0
    features = TokenFeatures(ranks, lengths, classes)
    model = fit_prior_model(priors, features)

    x, size = np.log1p(ranks.double().numpy()), np.log(lengths.double().numpy())
    columns = [(classes.numpy() == c) * v for c in range(3) for v in (np.ones_like(x), x)]
    design = np.stack([*columns, size - size.mean()], axis=1)
    root = 1.0 / np.sqrt(1.0 + ranks.double().numpy())
    reference = np.linalg.lstsq(design * root[:, None], priors.numpy() * root, rcond=None)[0]
    ours = [v for c in range(3) for v in (model.intercept[c], model.slope[c])] + [model.length_slope]
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-8)

    # the frequent punctuation a text shows keeps (nearly) its own line; an unweighted fit bends it to the tail
    frequent = slice(600, 900)
    ours_error = (model.predict(features.subset(np.arange(600, 900))).double() - priors[frequent]).abs().mean()
    plain = np.linalg.lstsq(design, priors.numpy(), rcond=None)[0]
    plain_error = np.abs(design[frequent] @ plain - priors.numpy()[frequent]).mean()
    assert float(ours_error) < 0.5 and plain_error > 3 * float(ours_error)


def test_plan_prior_form_fit_tells_word_middles_from_word_starts() -> None:
    priors, features, lines = _class_data()
    # two new tokens of one rank and length: a word start and a word middle
    estimated = TokenFeatures(torch.tensor([5000, 5000]), torch.tensor([4, 4]), torch.tensor([0, 1]))
    estimated_priors = torch.tensor([6.0, 6.0])
    form = plan_prior(_statistics(), estimated_priors, estimated, priors, features, 1.0, "form")
    gap = (lines[0][0] - lines[1][0]) + (lines[0][1] - lines[1][1]) * np.log1p(5000)
    assert float(form.shift[0] - form.shift[1]) == pytest.approx(gap, abs=0.02)
    rank = plan_prior(_statistics(), estimated_priors, estimated, priors, features, 1.0, "rank")
    assert float(rank.shift[0]) == float(rank.shift[1])  # one line cannot tell them apart
    assert form.report["residual_std"] < 0.5 * rank.report["residual_std"]
    classes = form.report["classes"]
    assert classes["word middle"]["estimated"] == 1 and classes["other"]["line"] == "rank line"
    assert classes["unspaced script"] == {"shared": 500, "estimated": 0, "line": "rank line"}
    assert classes["word start"]["line"]["slope"] == pytest.approx(-1.0, abs=0.001)


def test_frequency_ranks_follow_ids_for_bpe_and_scores_for_unigram(
    byte_level_tokenizer: PreTrainedTokenizerFast,
) -> None:
    bpe = build_vocabulary(byte_level_tokenizer)
    assert np.array_equal(frequency_ranks(bpe), np.arange(bpe.size))

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=150, special_tokens=["<unk>"]))
    vocab = build_vocabulary(PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>"))
    scores = np.array([score for _, score in json.loads(unigram.to_str())["model"]["vocab"]])
    ranks = frequency_ranks(vocab)
    assert sorted(ranks.tolist()) == list(range(vocab.size))
    assert np.all(np.diff(scores[np.argsort(ranks)]) <= 0)  # rank order is score order, highest first


def test_sampled_states_equal_a_full_forward_over_the_samples() -> None:
    model = tiny_llama(120)
    tokens, states = sample_hidden_states(model, 3, samples=4, length=7, seed=1)
    assert tokens.shape == (4, 8) and states.shape == (28, 32) and bool((tokens[:, 0] == 3).all())
    with torch.no_grad():
        full = model(input_ids=tokens[:, :-1], output_hidden_states=True).hidden_states[-1]
    # the cached, one-token-at-a-time states are the states a full forward gives, position-major
    assert torch.allclose(states, full.transpose(0, 1).reshape(28, 32), atol=1e-5)
    again, _ = sample_hidden_states(model, 3, samples=4, length=7, seed=1)
    other, _ = sample_hidden_states(model, 3, samples=4, length=7, seed=2)
    assert torch.equal(tokens, again) and not torch.equal(tokens, other)


@pytest.mark.parametrize("peek", [3, 8, 1000])
def test_top_p_sampling_draws_from_the_nucleus_in_proportion_whatever_the_peek(
    monkeypatch: pytest.MonkeyPatch, peek: int
) -> None:
    monkeypatch.setattr(prior, "NUCLEUS_PEEK", peek)  # 3: narrower than one row's nucleus, so that step sorts all
    probs = torch.tensor(
        [
            [0.5, 0.3, 0.15, 0.05, 0, 0, 0, 0, 0, 0],  # nucleus at 0.85: the first three (0.5 + 0.3 <= 0.85)
            [0.02, 0.2, 0.02, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.06],  # nucleus: all but the three smallest
        ]
    )
    logits = probs.clamp(min=1e-9).log().repeat(2000, 1)
    drawn = prior._top_p_sample(logits, 0.85, torch.Generator().manual_seed(0)).view(2000, 2)
    counts = [torch.bincount(drawn[:, row], minlength=10).double() / 2000 for row in range(2)]
    for row, nucleus in enumerate([[0, 1, 2], [1, 3, 4, 5, 6, 7, 8]]):
        outside = [token for token in range(10) if token not in nucleus]
        assert counts[row][outside].sum() == 0  # never outside the nucleus
        expected = probs[row, nucleus].double() / probs[row, nucleus].sum()
        assert torch.allclose(counts[row][nucleus], expected, atol=0.04)  # in proportion


def _force_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny random models have no frequency structure to find: make the fit apply whatever it finds."""
    monkeypatch.setattr(prior, "MIN_SHARED", 1)
    monkeypatch.setattr(prior, "MIN_CORRELATION", -2.0)


def test_transplant_shifts_the_head_rows_along_the_models_own_direction(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tied_or_untied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    _force_fit(monkeypatch)
    model_dir = tied_or_untied_model_dir
    runs = {}
    for setting in ("on", "off"):
        options = TransplantOptions(embedder=str(tiny_embedder_dir), prior=setting, prior_weight=0.5)
        result = transplant(model_dir, new_tokenizer_dir, tmp_path / setting, options)
        runs[setting] = (result, AutoModelForCausalLM.from_pretrained(tmp_path / setting))
    result = runs["on"][0]
    assert result.prior is not None and result.prior["applied"] and runs["off"][0].prior is None
    on, off = runs["on"][1], runs["off"][1]

    old, old_tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    old_vocab = build_vocabulary(old_tokenizer)
    alignment = align_vocabularies(
        old_vocab, build_vocabulary(AutoTokenizer.from_pretrained(tmp_path / "on")), old_vocab.size
    )
    estimated, copied = alignment.estimated_ids, alignment.copied_ids
    start = old_tokenizer.bos_token_id if old_tokenizer.bos_token_id is not None else old_tokenizer.eos_token_id
    expected = hidden_statistics(sample_hidden_states(old, start, seed=0)[1]).direction

    head_on, head_off = on.get_output_embeddings().weight, off.get_output_embeddings().weight
    difference = (head_on - head_off).detach()
    assert torch.equal(difference[copied], torch.zeros_like(difference[copied]))
    shift = difference[estimated] @ expected / (expected @ expected)
    # every estimated row moved by its own amount along the model's constant-logit direction, and only along it
    assert torch.allclose(difference[estimated], torch.outer(shift, expected), atol=1e-5)
    assert float(shift.abs().max()) > 1e-3
    assert float(shift.mean()) == pytest.approx(result.prior["mean_shift"], abs=1e-3)
    if not old.config.tie_word_embeddings:  # the input rows are read by the first layer, not the head: untouched
        assert torch.equal(on.get_input_embeddings().weight, off.get_input_embeddings().weight)
    card = (tmp_path / "on" / "README.md").read_text()
    assert "Prior calibration: estimated rows' mean logits moved 0.5 of the way" in card
    assert json.loads((tmp_path / "on" / REPORT_NAME).read_text())["prior"]["applied"] is True


def test_both_checkpoint_paths_calibrate_alike_and_auto_spares_big_checkpoints(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    _force_fit(monkeypatch)
    embedder = str(tiny_embedder_dir)

    def run(name: str, **overrides: object) -> TransplantResult:
        options = TransplantOptions(embedder=embedder, **overrides)  # type: ignore[arg-type]
        return transplant(tied_model_dir, new_tokenizer_dir, tmp_path / name, options)

    weights = {}
    for io in ("file-level", "in-memory"):
        result = run(io, checkpoint_io=io)
        assert result.model["io"] == io and result.prior is not None and result.prior["applied"]
        weights[io] = AutoModelForCausalLM.from_pretrained(tmp_path / io).get_input_embeddings().weight
    assert torch.equal(weights["file-level"], weights["in-memory"])

    # every checkpoint is "big" now: auto spares the file-level path's memory, and says so
    monkeypatch.setattr(importlib.import_module("tokenadapt.transplant"), "PRIOR_AUTO_MAX_BYTES", 1)
    skipped = run("auto")
    assert skipped.model["io"] == "file-level" and skipped.prior is not None and not skipped.prior["applied"]
    assert "--prior on to calibrate anyway" in skipped.prior["reason"] and "prior" not in skipped.timings
    assert "Prior calibration: not applied: it needs the whole model in memory" in skipped.to_markdown()
    for result in (run("on", prior="on"), run("loaded", checkpoint_io="in-memory")):  # asked for, or in memory
        assert result.prior is not None and result.prior["applied"]


def test_prior_fit_form_reports_its_classes_and_rank_keeps_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    _force_fit(monkeypatch)
    monkeypatch.setattr(prior, "MIN_CLASS_SHARED", 5)  # a tiny vocabulary: let its classes have lines
    results, heads = {}, {}
    for fit in ("form", "rank"):
        options = TransplantOptions(embedder=str(tiny_embedder_dir), prior_fit=fit)
        results[fit] = transplant(tied_model_dir, new_tokenizer_dir, tmp_path / fit, options)
        heads[fit] = AutoModelForCausalLM.from_pretrained(tmp_path / fit).get_output_embeddings().weight.detach()
    form, rank = results["form"].prior, results["rank"].prior
    assert form is not None and rank is not None and form["prior_fit"] == "form" and rank["prior_fit"] == "rank"
    assert "classes" not in rank and form["fit"] == rank["fit"]  # the same rank line decides whether to apply

    # every shared token the fit read and every estimated row is counted in exactly one class
    classes = form["classes"]
    assert list(classes) == list(PRIOR_CLASSES)
    assert sum(c["shared"] for c in classes.values()) == form["shared_tokens"]
    assert sum(c["estimated"] for c in classes.values()) == results["form"].counts["estimated"]
    lined = [name for name, c in classes.items() if c["line"] != "rank line"]
    assert lined and "unspaced script" not in lined
    assert f"a line each for {', '.join(lined)}" in results["form"].to_markdown()
    assert "frequency order predicts (one line" in results["rank"].to_markdown()

    # the fits differ only in the estimated rows' shifts: copied rows are the same bytes
    new_vocab = build_vocabulary(AutoTokenizer.from_pretrained(tmp_path / "form"))
    old_vocab = build_vocabulary(AutoTokenizer.from_pretrained(tied_model_dir))
    alignment = align_vocabularies(old_vocab, new_vocab, old_vocab.size)
    assert torch.equal(heads["form"][alignment.copied_ids], heads["rank"][alignment.copied_ids])
    assert not torch.equal(heads["form"][alignment.estimated_ids], heads["rank"][alignment.estimated_ids])


def test_prior_is_on_by_default_for_hybrid_only(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    assert TransplantOptions().prior_active and not TransplantOptions(method="mean").prior_active
    assert not TransplantOptions(prior="off").prior_active and not TransplantOptions(prior_weight=0.0).prior_active
    assert TransplantOptions(method="mean", prior="on").prior_active
    result = transplant(
        tied_model_dir,
        new_tokenizer_dir,
        tmp_path / "mean",
        TransplantOptions(embedder=str(tiny_embedder_dir), method="mean"),
    )
    assert result.prior is None and "Prior calibration: off" in result.to_markdown()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prior": "maybe"}, "--prior must be"),
        ({"prior_weight": 1.5}, "--prior-weight must be between 0 and 1"),
        ({"prior_fit": "classes"}, "--prior-fit must be one of form, rank"),
        ({"prior": "on", "method": "random"}, "--prior on cannot calibrate --method random"),
    ],
)
def test_bad_prior_options_are_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TransplantOptions(**overrides).validated()
