from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from tokenadapt import bench
from tokenadapt.errors import InputError
from tokenadapt.evaluation import evaluate
from tokenadapt.options import BenchOptions, EvalOptions


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. Der Hund schläft.\n" * 6, encoding="utf-8")
    return path


def test_bench_runs_resumes_and_agrees_with_eval(
    tied_model_dir: Path, new_tokenizer_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = BenchOptions(
        models=(str(tied_model_dir),),
        targets=(str(new_tokenizer_dir),),
        methods=("subword-mean",),
        texts=(str(text_file),),
        max_bytes=2000,
        context=64,
        work=str(tmp_path / "work"),
    )
    lines: list[str] = []
    result = bench.run_bench(options, log=lines.append)
    assert [c["method"] for c in result.cells] == ["subword-mean"] and len(lines) == 1
    assert not list((tmp_path / "work" / "models").iterdir())  # transplanted models are deleted once scored
    cell = result.cells[0]
    assert cell["transplant"]["peak_rss_mb"] > 0 and cell["transplant"]["counts"]["estimated"] > 0

    # the same ratio as `tokenadapt eval` of the same transplant against the original
    from tokenadapt.options import TransplantOptions
    from tokenadapt.transplant import transplant

    out = tmp_path / "again"
    transplant(tied_model_dir, new_tokenizer_dir, out, TransplantOptions(method="subword-mean"))
    scores = evaluate(
        out, [str(text_file)], str(tied_model_dir), EvalOptions(context=64, stride=64, bos="never", max_bytes=2000)
    )
    assert result.ratios(cell)[str(text_file)] == pytest.approx(scores.rows[0].ratio("bits_per_byte"), rel=1e-6)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(bench, "transplant_in_subprocess", refuse)
    resumed = bench.run_bench(options)
    assert json.dumps(resumed.cells, sort_keys=True) == json.dumps(result.cells, sort_keys=True)

    markdown = resumed.to_markdown()
    assert "| subword-mean |" in markdown and "tokens/byte (original -> new)" in markdown


def test_bench_plots_one_png_per_model_and_target(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cell = {"model": "m", "target": "t", "method": "x", "transplant": {"wall_s": 1, "peak_rss_mb": 1}}
    result = bench.BenchResult(
        options={},
        original={"m": {"a": {"bits_per_byte": 1.0, "tokens_per_byte": 0.2}}},
        cells=[{**cell, "scores": {"a": {"bits_per_byte": 1.5, "tokens_per_byte": 0.1}}}],
    )
    assert result.ratios(result.cells[0]) == {"a": 1.5}
    (png,) = result.plot(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_unknown_methods() -> None:
    with pytest.raises(InputError, match="unknown --methods"):
        BenchOptions(methods=("nope",)).validated()


def test_bench_heals_cells_when_asked(tied_model_dir: Path, new_tokenizer_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "long.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Der Hund schläft.\n" * 30, encoding="utf-8")
    options = BenchOptions(
        models=(str(tied_model_dir),),
        targets=(str(new_tokenizer_dir),),
        methods=("subword-mean",),
        texts=(str(text),),
        max_bytes=2000,
        context=64,
        heal="2steps",
        heal_flags="--held-out-bytes 400 --context 32 --eval-every 1 --learning-rate 0.03",
        work=str(tmp_path / "work"),
    )
    result = bench.run_bench(options)
    (cell,) = result.cells
    assert cell["heal"]["steps"] == 2 and cell["heal"]["objective"] == "ntp"
    healed = result.healed_ratios(cell)
    assert healed is not None and healed.keys() == result.ratios(cell).keys()
    assert healed != result.ratios(cell)  # the healed model was scored, not the zero-shot one again
    assert "subword-mean, healed 0 min (ntp)" in result.to_markdown()
    assert not list((tmp_path / "work" / "models").iterdir())
    unhealed = bench.cell_key(
        cell["model"], cell["target"], "subword-mean", BenchOptions(**{**options.to_dict(), "heal": ""})
    )
    assert unhealed != bench.cell_key(cell["model"], cell["target"], "subword-mean", options)


def test_bench_gives_bos_to_a_base_model_trained_with_one_and_to_its_transplants(
    tied_model_dir: Path, tmp_path: Path
) -> None:
    assert bench.base_bos(tied_model_dir) == "never"  # its tokenizer adds no bos
    tokenizer = AutoTokenizer.from_pretrained(tied_model_dir)
    with_bos = tmp_path / "with-bos"
    shutil.copytree(tied_model_dir, with_bos)
    processor = TemplateProcessing(
        single=f"{tokenizer.eos_token} $A", special_tokens=[(tokenizer.eos_token, tokenizer.eos_token_id)]
    )
    tokenizer.backend_tokenizer.post_processor = processor
    tokenizer.bos_token = tokenizer.eos_token
    tokenizer.save_pretrained(with_bos)
    assert bench.base_bos(with_bos) == "always"
    options = BenchOptions(models=(str(with_bos),), targets=("gpt2",), methods=("mean",))
    assert bench.cell_key(str(with_bos), "gpt2", "mean", options, "always") != bench.cell_key(
        str(with_bos), "gpt2", "mean", options
    )
