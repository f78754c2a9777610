"""Faults: kill -9 at random points, Ctrl-C and a full disk mid-write, stale staging directories, resumption.

Whatever happens, OUT is complete or absent, the inputs are byte-identical, and the next run succeeds.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.conftest import tiny_llama
from tokenadapt.cli import main
from tokenadapt.errors import OutputError
from tokenadapt.file_level import verify_directory
from tokenadapt.options import TransplantOptions
from tokenadapt.output import LOCK_NAME, clean_stale_partials, staged_output
from tokenadapt.transplant import transplant
from tokenadapt.zoo.cache import cache_path


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def weights_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(out.glob("*.safetensors")):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def sharded_model(tmp_path: Path, byte_level_tokenizer: PreTrainedTokenizerFast) -> Path:
    """Untied bf16 in three shards: a transplant rewrites two and hard-links one."""
    path = tmp_path / "model"
    model = tiny_llama(len(byte_level_tokenizer), tied=False).to(torch.bfloat16)  # type: ignore[arg-type]
    model.config.eos_token_id = byte_level_tokenizer.eos_token_id
    model.save_pretrained(str(path), max_shard_size="40KB")
    byte_level_tokenizer.save_pretrained(str(path))
    return path


def leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


def wait_for_partial(parent: Path, process: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    """Poll until the run's own staging directory appears (True) or the process ends (False)."""
    earlier = set(parent.glob(".out.*.partial"))  # left by runs killed before: not this one's
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if set(parent.glob(".out.*.partial")) - earlier:
            return True
        time.sleep(0.005)
    return False


def test_kill_9_at_random_points_leaves_no_output_and_a_rerun_resumes(
    tmp_path: Path, sharded_model: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    seed = int(os.environ.get("TOKENADAPT_FAULT_SEED", random.SystemRandom().randrange(1 << 30)))
    rng = random.Random(seed)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "tokenadapt", "-q", "transplant", str(sharded_model), str(new_tokenizer_dir), str(out),
        "--embedder", str(tiny_embedder_dir),
    ]  # fmt: skip
    inputs = {p: tree_digest(p) for p in (sharded_model, new_tokenizer_dir, tiny_embedder_dir)}
    keep = {sharded_model.name, new_tokenizer_dir.name}
    # once while starting up, then twice while writing or verifying (after the staging directory appears)
    plan = [("start", rng.uniform(0.5, 4.0)), ("writing", rng.uniform(0.0, 0.3)), ("writing", rng.uniform(0.3, 1.5))]
    for when, delay in plan:
        note = f"seed {seed}: kill -9 {delay:.2f} s after {when}"
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if when == "writing":
            wait_for_partial(tmp_path, process)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        stderr = process.communicate(timeout=120)[1].decode()
        if out.exists():  # the run got as far as its final rename (it may have been killed while exiting)
            found = verify_directory(out, 10**9)
            assert found.passed and (out / "transplant_report.json").is_file(), (note, found.problems)
            finished = f"finished-{delay:.2f}"
            os.rename(out, tmp_path / finished)
            keep.add(finished)
        else:
            assert process.returncode == -signal.SIGKILL, f"{note}: {stderr}"
        stray = leftovers(tmp_path, keep)
        assert all(name.startswith(".out.") and name.endswith(".partial") for name in stray), (note, stray)
        for path, digest in inputs.items():
            assert tree_digest(path) == digest, f"{note}: {path} changed"

    # a re-run cleans what the killed runs left, reuses the cached auxiliary embeddings, and succeeds
    cached = {p: p.stat().st_mtime_ns for p in cache_path("embeddings").rglob("*.npy")}
    result = transplant(sharded_model, new_tokenizer_dir, out, TransplantOptions(embedder=str(tiny_embedder_dir)))
    assert result.verification is not None and result.verification["passed"]
    assert not [name for name in leftovers(tmp_path, keep | {"out"}) if name.startswith(".out.")], seed
    if cached:  # a run got past the embedding stage before it was killed
        assert {p: p.stat().st_mtime_ns for p in cached} == cached, seed
    reference = tmp_path / "reference"
    transplant(sharded_model, new_tokenizer_dir, reference, TransplantOptions(embedder=str(tiny_embedder_dir)))
    assert weights_digest(out) == weights_digest(reference)  # byte-identical weights, run after run
    for path, digest in inputs.items():
        assert tree_digest(path) == digest


def test_stale_staging_directories_are_removed_only_when_their_owner_is_dead(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = tmp_path / ".out.dead.partial"
    dead.mkdir()
    (dead / LOCK_NAME).write_text("")  # a lock file nobody holds: its process was killed
    (dead / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / ".out.alive.partial"
    alive.mkdir()
    handle = open(alive / LOCK_NAME, "w")  # noqa: SIM115 - held across the call below
    fcntl.flock(handle, fcntl.LOCK_EX)
    young, old = tmp_path / ".out.young.partial", tmp_path / ".out.old.partial"
    young.mkdir()
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # unlocked and an hour old: stale
    other = tmp_path / ".other.x.partial"
    other.mkdir()
    (other / LOCK_NAME).write_text("")  # belongs to another OUT
    try:
        removed = clean_stale_partials(out)
        assert sorted(p.name for p in removed) == [".out.dead.partial", ".out.old.partial"]
        assert alive.exists() and young.exists() and other.exists()
    finally:
        handle.close()
    assert [p.name for p in clean_stale_partials(out)] == [".out.alive.partial"]  # its owner let go


def test_an_overwrite_killed_between_its_renames_gets_the_old_output_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    aside = tmp_path / ".out.x.replaced"
    (aside / "out").mkdir(parents=True)
    (aside / "out" / "model.safetensors").write_text("previous")
    (aside / LOCK_NAME).write_text("")
    with pytest.raises(OutputError, match="--overwrite"), staged_output(out):
        pass  # the old OUT is back, so a run without --overwrite refuses to replace it
    assert (out / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("fault", ["ctrl-c", "full-disk"])
def test_a_fault_while_writing_shards_leaves_no_output(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    sharded_model: Path,
    new_tokenizer_dir: Path,
    fault: str,
) -> None:
    import tokenadapt.file_level as file_level

    real_write = file_level.write_safetensors
    calls = []

    def failing_write(path: Path, *args: object, **kwargs: object) -> object:
        calls.append(path)
        if len(calls) == 2:  # the second rewritten shard, with the first one already on disk
            path.write_bytes(b"partial shard")
            if fault == "ctrl-c":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(file_level, "write_safetensors", failing_write)
    before = tree_digest(sharded_model)
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(["-q", "transplant", str(sharded_model), str(new_tokenizer_dir), str(out), "--method", "mean"])
    stderr = capsys.readouterr().err
    assert len(calls) == 2
    if fault == "ctrl-c":
        assert code == 130 and "interrupted" in stderr
    else:
        assert code == 2 and stderr.startswith("error: ") and "full" in stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new-tokenizer"]
    assert tree_digest(sharded_model) == before
