"""tokenadapt diagnose: the excess splits exactly, matches the scorer, and the head split matches a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenadapt.cli import main
from tokenadapt.errors import InputError
from tokenadapt.evaluation.excess import diagnose, heads_of
from tokenadapt.evaluation.scoring import score_text
from tokenadapt.options import EvalOptions, TransplantOptions
from tokenadapt.transplant import transplant
from tokenadapt.vocab import Assignment, align_vocabularies, build_vocabulary

TEXT = "The cat sat on the mat, and the dog sat on the log.\nDer Hund schläft.\n" * 6
OPTIONS = EvalOptions(context=512, stride=511, bos="never", max_bytes=0)


@pytest.fixture
def moved(tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path) -> Path:
    out = tmp_path / "moved"
    transplant(tied_model_dir, new_tokenizer_dir, out, TransplantOptions(embedder=str(tiny_embedder_dir)))
    return out


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_a_model_against_itself_has_no_excess(tied_model_dir: Path, text_file: Path) -> None:
    result = diagnose(tied_model_dir, [str(text_file)], reference=tied_model_dir, options=OPTIONS)
    (row,) = result.texts
    assert row.excess == pytest.approx(0.0, abs=1e-6) and row.model_nll == pytest.approx(row.original_nll)
    assert row.parts["target estimated"]["positions"] == 0 and row.head_split["positions"] == 0
    assert all(abs(part["excess"]) < 1e-6 for part in row.parts.values())


def test_the_excess_splits_exactly_and_matches_the_scorer(moved: Path, text_file: Path) -> None:
    result = diagnose(moved, [str(text_file)], options=OPTIONS)  # the original comes from the report
    assert result.reference.endswith("tied-model")
    (row,) = result.texts
    model, tokenizer = AutoModelForCausalLM.from_pretrained(moved), AutoTokenizer.from_pretrained(moved)
    score = score_text(model, tokenizer, TEXT, OPTIONS)
    assert row.model_nll == pytest.approx(score.nll, rel=1e-6) and row.bytes == score.scored_bytes
    assert row.excess == pytest.approx(row.model_nll - row.original_nll, abs=1e-6)
    for a, b in (("target copied", "target estimated"), ("input copied", "input estimated")):
        assert row.parts[a]["excess"] + row.parts[b]["excess"] == pytest.approx(row.excess, abs=1e-6)
        assert row.parts[a]["positions"] + row.parts[b]["positions"] == score.scored_tokens
    assert row.parts["target estimated"]["positions"] > 0
    assert [c.excess for c in row.costliest] == sorted((c.excess for c in row.costliest), reverse=True)
    assert not any("Ġ" in c.token or "▁" in c.token for c in row.costliest)  # the text a token stands for
    assert any(c.token.startswith(" ") for c in row.costliest)


def test_the_head_split_is_a_hand_computation(moved: Path, text_file: Path, tied_model_dir: Path) -> None:
    (row,) = diagnose(moved, [str(text_file)], options=OPTIONS).texts
    model, tokenizer = AutoModelForCausalLM.from_pretrained(moved), AutoTokenizer.from_pretrained(moved)
    old_vocab = build_vocabulary(AutoTokenizer.from_pretrained(tied_model_dir))
    new_vocab = build_vocabulary(tokenizer)
    alignment = align_vocabularies(old_vocab, new_vocab, len(old_vocab.tokens))
    heads = heads_of(old_vocab, new_vocab, alignment)
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    split, positions = 0.0, 0
    for p in range(1, len(ids)):
        head = int(heads[ids[p]])
        if alignment.kinds[ids[p]] == Assignment.ESTIMATED and head >= 0:
            alone, rival = float(log_probs[p - 1, ids[p]]), float(log_probs[p - 1, head])
            split += -alone + float(np.logaddexp(alone, rival))
            positions += 1
    assert positions > 0 and row.head_split["positions"] == positions
    assert row.head_split["excess"] == pytest.approx(split, rel=1e-4)
    assert row.head_split["with_head_nll"] <= row.head_split["target_nll"]


def test_a_head_is_a_copied_prefix_of_its_token(moved: Path, tied_model_dir: Path) -> None:
    old_vocab = build_vocabulary(AutoTokenizer.from_pretrained(tied_model_dir))
    new_vocab = build_vocabulary(AutoTokenizer.from_pretrained(moved))
    alignment = align_vocabularies(old_vocab, new_vocab, len(old_vocab.tokens))
    heads = heads_of(old_vocab, new_vocab, alignment)
    with_head = np.flatnonzero(heads >= 0)
    assert with_head.size > 10
    copied = set(alignment.copied_ids.tolist())
    for token_id in with_head.tolist():
        head = int(heads[token_id])
        assert head in copied and alignment.kinds[token_id] == Assignment.ESTIMATED
        whole, start = new_vocab.canonical[token_id], new_vocab.canonical[head]
        assert whole is not None and start and whole.startswith(start) and len(whole) > len(start)


def test_cli_prints_and_saves_and_names_a_missing_report(
    capsys: pytest.CaptureFixture[str], moved: Path, text_file: Path, tied_model_dir: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "diagnosis.json"
    code = main(["-q", "diagnose", str(moved), "--text", str(text_file), "--bos", "never", "--json", str(saved)])
    out = capsys.readouterr().out
    assert code == 0 and "head split" in out and "Costliest targets" in out
    data = json.loads(saved.read_text())
    assert data["texts"][0]["excess"] == pytest.approx(data["texts"][0]["model_nll"] - data["texts"][0]["original_nll"])
    code = main(["-q", "diagnose", str(tied_model_dir), "--text", str(text_file)])
    err = capsys.readouterr().err
    assert code == 2 and "--reference" in err and "Traceback" not in err
    code = main(["-q", "diagnose", str(moved), "--text", str(text_file), "--json", str(tmp_path / "no" / "d.json")])
    err = capsys.readouterr().err
    assert code == 2 and "Cannot write" in err and "Traceback" not in err
    with pytest.raises(InputError, match="--top"):
        diagnose(moved, [str(text_file)], options=OPTIONS, top=-1)
