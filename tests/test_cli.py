"""The CLI: thin over the library; every user error is one clear paragraph, exit code 2, no traceback."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenadapt.checkpoint import read_embeddings
from tokenadapt.cli import build_parser, keep_freed_memory, main
from tokenadapt.errors import InputError
from tokenadapt.options import TransplantOptions


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_flags_and_defaults_come_from_the_options_object() -> None:
    args = build_parser().parse_args(["transplant", "m", "t", "out"])
    for name, value in TransplantOptions().to_dict().items():
        assert getattr(args, name) == value
    args = build_parser().parse_args(["transplant", "m", "t", "out", "--top-k", "5", "--no-verify"])
    assert args.top_k == 5 and args.verify is False


@pytest.mark.parametrize(
    "argv, quiet, verbose",
    [
        (["-q", "transplant", "m", "t", "out"], True, False),
        (["transplant", "m", "t", "out", "--quiet"], True, False),
        (["-v", "eval", "m", "-q"], True, True),
        (["list", "-v"], False, True),
        (["transplant", "m", "t", "out"], False, False),
    ],
)
def test_verbose_and_quiet_work_before_and_after_the_command(argv: list[str], quiet: bool, verbose: bool) -> None:
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)


def test_transplant_via_cli_writes_a_model(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        capsys,
        "-q",
        "transplant",
        str(tied_model_dir),
        str(new_tokenizer_dir),
        str(out),
        "--embedder",
        str(tiny_embedder_dir),
    )
    assert code == 0
    assert "| estimated |" in stdout
    assert (out / "transplant_report.json").exists()
    assert f"transplant {tied_model_dir}" in (out / "README.md").read_text()  # the exact command is recorded


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing-model", "does not exist"),
        ("bad-tokenizer", "tokenizer"),
        ("existing-out", "--overwrite"),
        ("out-is-input", "input"),
        ("out-is-embedder", "input"),
        ("bad-option", "--temperature"),
        ("unknown-method", "must be one of hybrid, local"),
        ("out-parent-is-file", "is a file, not a directory"),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_is_touched(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
    case: str,
    expected: str,
) -> None:
    out = tmp_path / "out"
    model, tokenizer, extra = str(tied_model_dir), str(new_tokenizer_dir), ["--embedder", str(tiny_embedder_dir)]
    if case == "missing-model":
        model = str(tmp_path / "no-such-model")
    elif case == "bad-tokenizer":
        broken = tmp_path / "tokenizer.json"
        broken.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}')  # truncated JSON
        tokenizer = str(broken)
    elif case == "existing-out":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    elif case == "out-is-input":
        out = tied_model_dir
    elif case == "out-is-embedder":
        out, extra = tiny_embedder_dir, [*extra, "--overwrite"]
    elif case == "bad-option":
        extra += ["--temperature", "0"]
    elif case == "unknown-method":
        extra += ["--method", "magic"]
    elif case == "out-parent-is-file":
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / "out"
    before, embedder_before = tree_digest(tied_model_dir), tree_digest(tiny_embedder_dir)
    code, stdout, stderr = run_cli(capsys, "-q", "transplant", model, tokenizer, str(out), *extra)
    assert code == 2
    assert stderr.startswith("error: ") and expected in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert tree_digest(tied_model_dir) == before
    assert tree_digest(tiny_embedder_dir) == embedder_before
    if case == "existing-out":
        assert (out / "mine.txt").read_text() == "keep me"
    elif case == "out-parent-is-file":
        assert (tmp_path / "notes.txt").read_text() == "mine"
    else:
        assert not out.exists() or out in (tied_model_dir, tiny_embedder_dir)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_failure_during_writing_leaves_no_output(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    import tokenadapt.transplant as pipeline

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_json", full_disk)
    code, _, stderr = run_cli(
        capsys, "-q", "transplant", str(tied_model_dir), str(new_tokenizer_dir), str(tmp_path / "out"),
        "--embedder", str(tiny_embedder_dir),
    )  # fmt: skip
    assert code == 2 and "disk" in stderr and "full" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new-tokenizer", "tied-model"]


def test_an_input_this_user_may_not_read_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
) -> None:
    """Permissions cannot be tested through chmod when the suite runs as root, so the refusal is simulated."""
    import tokenadapt.zoo.models as models

    def unreadable(folder: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(folder / "config.json"))

    monkeypatch.setattr(models, "_require_config", unreadable)
    code, stdout, stderr = run_cli(
        capsys,
        "-q",
        "transplant",
        str(tied_model_dir),
        str(new_tokenizer_dir),
        str(tmp_path / "out"),
        "--method",
        "mean",
    )
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    assert stderr.startswith("error: Permission denied: ") and str(tied_model_dir / "config.json") in stderr
    assert "readable" in stderr and not (tmp_path / "out").exists()


def test_a_model_without_input_embeddings_is_a_clear_error() -> None:
    class NoEmbeddings(torch.nn.Module):
        def get_input_embeddings(self) -> None:
            raise NotImplementedError

    with pytest.raises(InputError, match="no input embedding"):
        read_embeddings(NoEmbeddings())


def test_unknown_text_name_lists_the_built_in_texts(capsys: pytest.CaptureFixture[str], tied_model_dir: Path) -> None:
    code, _, stderr = run_cli(capsys, "-q", "eval", str(tied_model_dir), "--text", "wiki-klingon")
    assert code == 2 and "wiki-en" in stderr and "Traceback" not in stderr


def test_list_works_offline_and_names_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capsys, "list")
    assert code == 0
    for name in (
        "smollm2-135m",
        "qwen2.5-coder-0.5b",
        "gemma3-270m",
        "llama3",
        "mistral-v3",
        "minilm",
        "wiki-en",
        "hybrid",
    ):
        assert name in stdout


def test_errors_from_a_real_process_have_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "TOKENADAPT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "tokenadapt", "transplant", str(tmp_path / "nope"), "llama3", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_verify_passes_a_transplant_and_flags_a_broken_one(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "-q",
                "transplant",
                str(tied_model_dir),
                str(new_tokenizer_dir),
                str(out),
                "--embedder",
                str(tiny_embedder_dir),
            ]
        )
        == 0
    )
    code, stdout, _ = run_cli(capsys, "-q", "verify", str(out))
    assert code == 0 and "FAILED" not in stdout and "finite_loss" in stdout
    # a config that lies about the eos id is caught
    config = json.loads((out / "config.json").read_text())
    config["eos_token_id"] = 3
    (out / "config.json").write_text(json.dumps(config))
    code, stdout, _ = run_cli(capsys, "-q", "verify", str(out))
    assert code == 1 and "eos_id_matches | FAILED" in stdout
    code, _, stderr = run_cli(capsys, "-q", "verify", str(tmp_path))
    assert code == 2 and "no config.json" in stderr


def test_train_tokenizer_then_report_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("in the middle of the night, the cat sat on the mat.\n" * 200, encoding="utf-8")
    out = tmp_path / "tok"
    code, stdout, _ = run_cli(
        capsys, "-q", "train-tokenizer", "--text", str(text), "--out", str(out), "--mode", "supertoken",
        "--vocab-size", "400", "--held-out", "0",
    )  # fmt: skip
    assert code == 0 and "supertoken" in stdout
    report = json.loads((out / "training_report.json").read_text())
    assert report["command"].startswith("tokenadapt -q train-tokenizer --text")

    code, stdout, _ = run_cli(
        capsys, "-q", "tokenizer-report", str(out), "--text", str(text), "--json", str(tmp_path / "r.json")
    )
    assert code == 0 and "bytes/token" in stdout
    stats = json.loads((tmp_path / "r.json").read_text())["stats"][0]
    assert stats["round_trip"] and stats["bytes"] == len(text.read_bytes())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--vocab-size", "10"], "--vocab-size must be more than"),
        (["--mode", "wordpiece"], "--mode must be one of"),
        (["--held-out", "0.9"], "--held-out"),
    ],
)
def test_train_tokenizer_bad_options_are_one_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], message: str
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("hello world\n" * 10)
    code, _, err = run_cli(capsys, "train-tokenizer", "--text", str(text), "--out", str(tmp_path / "tok"), *flags)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "tok").exists()


def test_tokenizer_report_on_a_missing_tokenizer_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "tokenizer-report", str(tmp_path / "nope"))
    assert code == 2 and err.startswith("error: ")


def test_freed_memory_is_kept_for_reuse_where_the_c_library_is_glibc() -> None:
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
