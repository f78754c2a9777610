"""heal on tiny transplanted models: only new rows change, loss falls, held-out is honest, output is complete."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tests.conftest import CORPUS, tiny_llama
from tokenadapt.cli import main
from tokenadapt.errors import InputError
from tokenadapt.evaluation.scoring import score_text
from tokenadapt.healing import HEAL_REPORT, heal
from tokenadapt.healing.data import Sequence, split_text
from tokenadapt.healing.trainer import _Trainable, _Trainer
from tokenadapt.options import EvalOptions, HealOptions, TransplantOptions
from tokenadapt.transplant import transplant
from tokenadapt.vocab import align_vocabularies, build_vocabulary


def quick(**overrides: object) -> HealOptions:
    values: dict[str, object] = {
        "budget": "6steps",
        "context": 32,
        "batch_size": 2,
        "eval_every": 2,
        "patience": 10,
        "held_out_bytes": 400,
        "learning_rate": 3e-2,
        "map_learning_rate": 3e-2,
        "warmup_steps": 1,
        "decay": "constant",  # six steps: a decay to 0 would leave the last ones with nothing to show
    }
    return HealOptions(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def heal_text(tmp_path: Path) -> Path:
    path = tmp_path / "heal.txt"
    path.write_text("\n".join(CORPUS), encoding="utf-8")
    return path


def transplanted(tmp_path: Path, model_dir: Path, tokenizer_dir: Path, embedder: Path) -> Path:
    out = tmp_path / f"zero-shot-{model_dir.name}"
    transplant(model_dir, tokenizer_dir, out, TransplantOptions(embedder=str(embedder)))
    return out


@pytest.mark.parametrize("fit", ["rows"])  # the affine fit's rows: tests/healing/test_affine.py
@pytest.mark.parametrize("tied", [True, False])
def test_only_the_new_rows_change(
    tmp_path: Path,
    tied_model_dir: Path,
    untied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
    heal_text: Path,
    tied: bool,
    fit: str,
) -> None:
    original = tied_model_dir if tied else untied_model_dir
    zero_shot = transplanted(tmp_path, original, new_tokenizer_dir, tiny_embedder_dir)
    result = heal(zero_shot, tmp_path / "healed", [str(heal_text)], quick(fit=fit))
    assert result.best_step > 0 and result.teacher == str(original)
    assert result.rows["residuals"] is False  # the default --residual-learning-rate is the affine fit's only

    before = load_file(str(zero_shot / "model.safetensors"))
    after = load_file(str(tmp_path / "healed" / "model.safetensors"))
    assert before.keys() == after.keys()
    alignment = align_vocabularies(
        build_vocabulary(AutoTokenizer.from_pretrained(original)),
        build_vocabulary(AutoTokenizer.from_pretrained(zero_shot)),
        len(AutoTokenizer.from_pretrained(original)),
    )
    new_rows = torch.zeros(len(alignment.kinds), dtype=torch.bool)
    new_rows[torch.from_numpy(alignment.estimated_ids)] = True
    assert result.rows["trained"] == int(new_rows.sum())
    embedding_names = [name for name in before if "embed_tokens" in name or "lm_head" in name]
    assert len(embedding_names) == (1 if tied else 2)
    for name, tensor in before.items():
        if name in embedding_names:
            assert torch.equal(after[name][~new_rows], tensor[~new_rows]), name  # copied rows byte-identical
            assert not torch.equal(after[name][new_rows], tensor[new_rows]), name  # new rows trained
        else:
            assert torch.equal(after[name], tensor), name  # the frozen body, byte for byte


def test_rows_all_maps_the_new_rows_and_moves_copied_rows_only_by_their_corrections(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path, heal_text: Path
) -> None:
    zero_shot = transplanted(tmp_path, tied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    out = tmp_path / "healed"
    result = heal(zero_shot, out, [str(heal_text)], quick(rows="all"))
    tokenizer = AutoTokenizer.from_pretrained(zero_shot)
    alignment = align_vocabularies(
        build_vocabulary(AutoTokenizer.from_pretrained(tied_model_dir)),
        build_vocabulary(tokenizer),
        len(AutoTokenizer.from_pretrained(tied_model_dir)),
    )
    estimated = torch.zeros(len(alignment.kinds), dtype=torch.bool)
    estimated[torch.from_numpy(alignment.estimated_ids)] = True
    assert result.rows["map_features"] == "pieces" and result.rows["corrections_only"] == int((~estimated).sum())
    assert result.rows["trained"] == result.rows["total"]
    readme = (out / "README.md").read_text()
    assert f"the other {int((~estimated).sum())} rows train by their corrections alone" in readme

    before = load_file(str(zero_shot / "model.safetensors"))["model.embed_tokens.weight"]
    after = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    seen = torch.zeros(before.shape[0], dtype=torch.bool)
    seen[tokenizer("\n".join(CORPUS))["input_ids"]] = True  # a superset of the tokens training showed
    changed = (after != before).any(dim=1)
    assert changed[estimated].all()  # the map moves every new row, seen or not
    assert changed[~estimated & seen].any()  # copied rows in the training text moved by their corrections
    unseen_copied = ~estimated & ~seen
    assert unseen_copied.any() and not changed[unseen_copied].any()  # the rest stay byte-identical


def test_untied_with_piece_features_input_and_output_heal_apart_and_copied_rows_stay(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path, heal_text: Path
) -> None:
    zero_shot = transplanted(tmp_path, tied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    out = tmp_path / "healed"
    result = heal(zero_shot, out, [str(heal_text)], quick(untie=True, map_features="pieces"))
    assert result.rows["untied"] and result.rows["map_features"] == "pieces"
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert "untied from the input matrix" in (out / "README.md").read_text()
    assert result.rows["residuals"] and "a correction of each row" in (out / "README.md").read_text()  # default

    before = load_file(str(zero_shot / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    matrix = before["model.embed_tokens.weight"]
    assert set(after) == set(before) | {"lm_head.weight"}
    new_rows = torch.zeros(len(matrix), dtype=torch.bool)
    zero_shot_tokenizer = AutoTokenizer.from_pretrained(zero_shot)
    original_tokenizer = AutoTokenizer.from_pretrained(tied_model_dir)
    alignment = align_vocabularies(
        build_vocabulary(original_tokenizer), build_vocabulary(zero_shot_tokenizer), len(original_tokenizer)
    )
    new_rows[torch.from_numpy(alignment.estimated_ids)] = True
    inputs, outputs = after["model.embed_tokens.weight"], after["lm_head.weight"]
    for healed in (inputs, outputs):
        assert torch.equal(healed[~new_rows], matrix[~new_rows])  # copied rows byte-identical, in both
        assert (healed[new_rows] != matrix[new_rows]).any(dim=1).all()  # every new row moved
    assert not torch.equal(inputs[new_rows], outputs[new_rows])  # two maps, not one
    for name, tensor in before.items():
        if name != "model.embed_tokens.weight":
            assert torch.equal(after[name], tensor), name  # the frozen body


def test_training_loss_falls_and_held_out_is_never_trained_on(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path, heal_text: Path
) -> None:
    zero_shot = transplanted(tmp_path, tied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    options = quick(objective="ntp", fit="rows")
    result = heal(zero_shot, tmp_path / "healed", [str(heal_text)], options)
    parts = split_text(heal_text.read_text(), "t", options.held_out_bytes, 0)
    described = result.texts[0]
    assert described["train_bytes"] + described["held_out_bytes"] == len(heal_text.read_bytes())
    assert described["held_out_sha256"] == hashlib.sha256(parts.held_out.encode()).hexdigest()

    from tokenadapt.evaluation.evaluator import load_scored_model

    scoring = EvalOptions(context=32, stride=31)
    losses = []
    for directory in (zero_shot, tmp_path / "healed"):
        model, tokenizer = load_scored_model(directory)
        losses.append(score_text(model, tokenizer, parts.train, scoring).bits_per_byte)
    assert losses[1] < losses[0] * 0.95
    name = described["name"]
    assert result.after["bits_per_byte"][name] < result.before["bits_per_byte"][name]
    assert [p["step"] for p in result.curve] == [0, 2, 4, 6]
    teacher = result.teacher_bits_per_byte
    assert teacher is not None
    assert result.before["mean_ratio"] == pytest.approx(result.before["bits_per_byte"][name] / teacher[name])


def test_distillation_heals_and_the_output_carries_the_history(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path, heal_text: Path
) -> None:
    zero_shot = transplanted(tmp_path, tied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    out = tmp_path / "healed"
    result = heal(zero_shot, out, [str(heal_text)], quick(objective="distill"), command="tokenadapt heal ...")
    # the tiny teacher is random, so matching it moves the student's held-out likelihood towards the teacher's
    # (here: worse); every scoring is in the curve, while the kept rows are those of the best held-out score
    ratios = [point["mean_ratio"] for point in result.curve]
    assert abs(ratios[-1] - 1) < abs(ratios[0] - 1)
    assert result.best_step == min(result.curve, key=lambda p: p["mean_bits_per_byte"])["step"]
    report = json.loads((out / HEAL_REPORT).read_text())
    assert report["objective"] == "distill" and report["transplant"]["method"] == "hybrid"
    assert (out / "transplant_report.json").read_bytes() == (zero_shot / "transplant_report.json").read_bytes()
    card = (out / "README.md").read_text()
    assert "Transplanted zero-shot" in card and "Healed by tokenadapt" in card
    assert "tokenadapt heal ..." in card


def test_same_seed_gives_identical_weights(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path, heal_text: Path
) -> None:
    zero_shot = transplanted(tmp_path, tied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    digests = []
    for name in ("a", "b"):
        heal(zero_shot, tmp_path / name, [str(heal_text)], quick(budget="3steps", eval_every=3))
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_rows_all_needs_no_teacher_and_rows_new_says_how_to_name_one(
    tmp_path: Path, tied_model_dir: Path, heal_text: Path
) -> None:
    with pytest.raises(InputError, match="--teacher"):
        heal(tied_model_dir, tmp_path / "x", [str(heal_text)], quick())
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="--map-features pieces reads the original model's rows"):
        heal(tied_model_dir, tmp_path / "x", [str(heal_text)], quick(rows="all", map_features="pieces"))
    assert not (tmp_path / "x").exists()
    result = heal(tied_model_dir, tmp_path / "all", [str(heal_text)], quick(rows="all", budget="2steps"))
    assert result.rows["trained"] == result.rows["total"] and result.teacher_bits_per_byte is None
    assert result.rows["map_features"] == "estimate"  # auto, without an original model to read pieces from


def test_cli_heal_reports_bad_input_without_a_traceback(
    tmp_path: Path, tied_model_dir: Path, heal_text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["-q", "heal", str(tied_model_dir), str(tmp_path / "o"), "--text", str(heal_text), "--budget", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "--budget 'x'" in err and "Traceback" not in err
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    code = main(["-q", "heal", str(tied_model_dir), str(tmp_path / "o"), "--text", str(short), "--rows", "all"])
    assert code == 2 and "held-out-bytes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    code = main(
        [
            "-q",
            "heal",
            str(tied_model_dir),
            str(tmp_path / "o"),
            "--text",
            str(heal_text),
            "--rows",
            "all",
            "--budget",
            "1steps",
            "--context",
            "32",
            "--held-out-bytes",
            "400",
        ]
    )
    assert code == 0 and "## Heal:" in capsys.readouterr().out


def test_a_failed_check_leaves_no_output_and_the_input_untouched(
    tmp_path: Path,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
    heal_text: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tokenadapt.checkpoint import Verification
    from tokenadapt.errors import TokenAdaptError
    from tokenadapt.healing import trainer

    zero_shot = transplanted(tmp_path, tied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    before = {p.name: p.read_bytes() for p in zero_shot.iterdir()}
    failing = Verification(checks={"finite_values": False}, problems=["NaN in the embeddings"])
    monkeypatch.setattr(trainer, "verify_directory", lambda *args, **kwargs: failing)
    with pytest.raises(TokenAdaptError, match="NaN"):
        heal(zero_shot, tmp_path / "healed", [str(heal_text)], quick(budget="1steps"))
    assert not (tmp_path / "healed").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".healed")]  # no partial directory either
    assert {p.name: p.read_bytes() for p in zero_shot.iterdir()} == before


def tokens_in_training_text(zero_shot: Path, heal_text: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool [V]: ids the training part of `heal_text` uses, the zero-shot input matrix [V, d])."""
    tokenizer = AutoTokenizer.from_pretrained(zero_shot)
    parts = split_text(heal_text.read_text(), "t", 400, 0)
    in_text = torch.zeros(len(tokenizer), dtype=torch.bool)
    in_text[torch.tensor(tokenizer(parts.train, add_special_tokens=False).input_ids)] = True
    return in_text, load_file(str(zero_shot / "model.safetensors"))["model.embed_tokens.weight"]


def test_sparse_updates_move_only_rows_of_tokens_in_the_text(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path, heal_text: Path
) -> None:
    zero_shot = transplanted(tmp_path, tied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    in_text, before = tokens_in_training_text(zero_shot, heal_text)
    moved = {}
    for sparse in (True, False):
        out = tmp_path / f"sparse-{sparse}"
        options = quick(fit="rows", sparse_updates=sparse, budget="2steps", eval_every=2)
        heal(zero_shot, out, [str(heal_text)], options)
        after = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
        moved[sparse] = (after != before).any(dim=1)
    assert moved[True].any() and not (moved[True] & ~in_text).any()  # sparse: only tokens of the text
    assert (moved[False] & ~in_text).any()  # dense: the softmax gradient reaches tokens the text never uses


def test_without_train_inputs_an_untied_model_keeps_its_input_rows(
    tmp_path: Path, untied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path, heal_text: Path
) -> None:
    zero_shot = transplanted(tmp_path, untied_model_dir, new_tokenizer_dir, tiny_embedder_dir)
    result = heal(zero_shot, tmp_path / "healed", [str(heal_text)], quick(train_inputs=False))
    assert result.best_step > 0
    before = load_file(str(zero_shot / "model.safetensors"))
    after = load_file(str(tmp_path / "healed" / "model.safetensors"))
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(after["lm_head.weight"], before["lm_head.weight"])


def test_learning_rate_warms_up_then_stays_or_decays_with_the_budget() -> None:
    from tokenadapt.healing.trainer import learning_rate

    constant = HealOptions(learning_rate=0.01, warmup_steps=4, decay="constant")
    rates = [learning_rate(constant, s, 0.5) for s in range(6)]
    assert rates == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    linear = HealOptions(learning_rate=0.01, warmup_steps=4, decay="linear")
    assert learning_rate(linear, 10, 0.0) == pytest.approx(0.01)
    assert learning_rate(linear, 10, 0.9) == pytest.approx(0.001)
    assert learning_rate(linear, 10, 1.2) == 0.0
    with pytest.raises(InputError, match="--decay"):
        HealOptions(decay="cosine").validated()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fit": "rowz"}, "--fit must be one of affine, rows"),
        ({"optimizer": "lazy-adam"}, "--optimizer lazy-adam needs --fit rows"),
        ({"optimizer": "adagrad"}, "--optimizer must be one of adam, lazy-adam, sgd"),
        ({"map_learning_rate": 0.0}, "--map-learning-rate must be positive"),
        ({"map_features": "words"}, "--map-features must be one of auto, estimate, pieces"),
        ({"map_features": "pieces", "fit": "rows"}, "--map-features pieces needs --fit affine"),
        ({"gradient_samples": -1}, r"--gradient-samples must be 0 \(exact\) or positive"),
        ({"residual_learning_rate": -1e-3}, r"--residual-learning-rate must be 0 \(off\) or positive"),
        ({"copied_learning_rate": 0.0}, "--copied-learning-rate must be positive"),
    ],
)
def test_heal_options_name_the_bad_flag(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        HealOptions(**overrides).validated()  # type: ignore[arg-type]


@pytest.mark.parametrize("optimizer", ["adam", "lazy-adam"])
def test_with_lazy_adam_a_row_stops_moving_once_its_token_leaves_the_batch(optimizer: str) -> None:
    model = tiny_llama(40)
    weight = model.get_input_embeddings().weight
    trainable = _Trainable([weight], torch.ones(40, dtype=torch.bool))
    options = HealOptions(fit="rows", optimizer=optimizer, learning_rate=1e-2, warmup_steps=0)
    trainer = _Trainer(model, SimpleNamespace(bos_token_id=None), None, None, trainable, options)

    def batch(ids: list[int]) -> list[Sequence]:
        return [Sequence(0, np.array(ids), np.arange(1, len(ids) + 1), "x" * len(ids))]

    trainer._step(batch([1, 2, 3, 1, 2, 3]))
    after_first = weight.detach().clone()
    trainer._step(batch([7, 8, 9, 7, 8, 9]))
    moved = (weight.detach() != after_first).any(dim=1)
    assert moved[[7, 8, 9]].all() and not moved[20:].any()  # sparse updates: never-seen rows stay put
    # lazy: rows 1-3 keep their value; Adam's momentum keeps pushing them
    assert bool(moved[[1, 2, 3]].any()) is (optimizer == "adam")


def test_sgd_moves_each_row_by_its_own_gradient_so_a_rare_token_moves_less_than_with_adam() -> None:
    displacement = {}
    for optimizer, lr in (("sgd", 0.5), ("adam", 1e-3)):
        model = tiny_llama(40)
        weight = model.get_input_embeddings().weight
        trainable = _Trainable([weight], torch.ones(40, dtype=torch.bool))
        options = HealOptions(fit="rows", optimizer=optimizer, learning_rate=lr, warmup_steps=0)
        trainer = _Trainer(model, SimpleNamespace(bos_token_id=None), None, None, trainable, options)
        before = weight.detach().clone()
        trainer._step([Sequence(0, np.array([5, 1, 2, 1, 2, 1, 2, 9]), np.arange(1, 9), "x" * 8)])
        step = weight.detach() - before
        if optimizer == "sgd":  # the first momentum step is exactly -lr x the (masked) gradient
            assert weight.grad is not None
            assert torch.allclose(step, -lr * weight.grad, atol=1e-7)
        norms = step.norm(dim=1)
        displacement[optimizer] = float(norms[9] / norms[1])  # token 9 is seen once (as input: never), 1 thrice
        assert not step[20:].any()
    # Adam's per-coordinate scaling gives every seen row about the same step; SGD follows the gradient's size
    assert displacement["sgd"] < 0.5 * displacement["adam"]
