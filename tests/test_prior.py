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
    HiddenStatistics,
    fit_prior,
    frequency_ranks,
    hidden_statistics,
    plan_prior,
    sample_hidden_states,
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


def test_plan_prior_moves_each_row_a_share_of_the_way_to_its_prediction() -> None:
    shared_ranks = torch.arange(300)
    shared_priors = 10.0 - torch.log1p(shared_ranks.float())
    estimated_ranks = torch.tensor([400, 2000])
    estimated_priors = torch.tensor([9.0, 1.0])
    plan = plan_prior(_statistics(), estimated_priors, estimated_ranks, shared_priors, shared_ranks, 0.5)
    predicted = 10.0 - torch.log1p(estimated_ranks.float())
    assert torch.allclose(plan.shift, 0.5 * (predicted - estimated_priors), atol=1e-5)
    assert plan.report["applied"] and plan.report["fit"]["r"] == pytest.approx(-1.0)
    # one scalar per row along one direction, so any column block is a slice of the same outer product
    assert torch.allclose(plan.block(1, 3), torch.outer(plan.shift, torch.tensor([1.0, 2.0])))


def test_plan_prior_moves_nothing_when_rank_says_nothing() -> None:
    generator = torch.Generator().manual_seed(0)
    shared_ranks = torch.randperm(300, generator=generator)
    shared_priors = 10.0 - torch.log1p(torch.arange(300).float())  # priors unrelated to these ranks
    plan = plan_prior(_statistics(), torch.tensor([9.0]), torch.tensor([400]), shared_priors, shared_ranks, 0.5)
    assert not plan.report["applied"] and "does not predict" in plan.report["reason"]
    assert torch.equal(plan.shift, torch.zeros(1))
    few = plan_prior(_statistics(), torch.tensor([9.0]), torch.tensor([40]), shared_priors[:20], torch.arange(20), 0.5)
    assert not few.report["applied"] and "only 20 shared tokens" in few.report["reason"]


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
        ({"prior": "on", "method": "random"}, "--prior on cannot calibrate --method random"),
    ],
)
def test_bad_prior_options_are_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TransplantOptions(**overrides).validated()
