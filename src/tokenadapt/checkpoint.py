"""Read a causal LM's embedding matrices, install new ones, save a standard Hugging Face directory, verify it.

Only the input embeddings, the output head (when untied) and its bias (when present) change in a transplant.
Tied models stay tied: the head shares the input matrix, and `save_pretrained` stores it once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from tokenadapt.errors import InputError, TokenAdaptError

VERIFY_TEXT = "The quick brown fox jumps over the lazy dog. 1234 + 5678 = 6912.\nDas ist gut. これはテストです。"


@dataclass(frozen=True)
class EmbeddingMatrices:
    """The matrices a transplant rewrites, as float32 copies: input [V, d], output [V, d] | None if tied."""

    input: torch.Tensor
    output: torch.Tensor | None
    output_bias: torch.Tensor | None
    tied: bool

    @property
    def rows(self) -> int:
        return int(self.input.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.input.shape[1])


def load_causal_lm(path: Path) -> Any:
    """Load a causal LM from a local directory in its stored dtype; InputError if that is not possible."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto")
    except (OSError, ValueError, KeyError) as error:
        raise InputError(
            f"Could not load a causal language model from {path}: {error}",
            "Pass a directory with config.json and weights of a model AutoModelForCausalLM supports, "
            "a .gguf file, or a built-in name (see `tokenadapt list`).",
        ) from error
    except SafetensorError as error:
        raise InputError(
            f"The weights in {path} cannot be read: {error}.",
            "A weight file is truncated or corrupted (an interrupted download or copy): re-download the model.",
        ) from error
    except RuntimeError as error:  # transformers raises this for weights whose shapes the config contradicts
        raise InputError(
            f"The weights in {path} do not have the shapes its config.json declares ({error}).",
            "Most often config.json's vocab_size differs from the embedding matrix's rows: set it to the number "
            "of rows (see the size-mismatch report above) and run again.",
        ) from error
    return model.eval()


def read_embeddings(model: Any) -> EmbeddingMatrices:
    """The model's input/output embedding matrices (float32 copies)."""
    try:
        input_layer = model.get_input_embeddings()
    except NotImplementedError:
        input_layer = None
    if input_layer is None or not hasattr(input_layer, "weight"):
        raise InputError(
            f"The model ({type(model).__name__}) exposes no input embedding matrix.",
            "tokenadapt transplants models whose get_input_embeddings() returns an embedding layer; "
            "pass a standard causal LM.",
        )
    output_layer = model.get_output_embeddings()
    tied = output_layer is None or output_layer.weight.data_ptr() == input_layer.weight.data_ptr()
    bias = None if output_layer is None else getattr(output_layer, "bias", None)
    return EmbeddingMatrices(
        input=input_layer.weight.detach().to(torch.float32).clone(),
        output=None if tied else output_layer.weight.detach().to(torch.float32).clone(),
        output_bias=None if bias is None else bias.detach().to(torch.float32).clone(),
        tied=tied,
    )


def install_embeddings(
    model: Any, input_rows: torch.Tensor, output_rows: torch.Tensor | None, output_bias: torch.Tensor | None
) -> None:
    """Resize the model to `input_rows.shape[0]` rows and copy the new matrices in (cast to the model's dtype)."""
    model.resize_token_embeddings(int(input_rows.shape[0]), mean_resizing=False)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding.copy_(input_rows.to(embedding.dtype))
        head = model.get_output_embeddings()
        if output_rows is not None and head is not None:
            head.weight.copy_(output_rows.to(head.weight.dtype))
        if output_bias is not None and head is not None and getattr(head, "bias", None) is not None:
            head.bias.copy_(output_bias.to(head.bias.dtype))
    model.config.vocab_size = int(input_rows.shape[0])


@dataclass
class Verification:
    """What `verify_model_dir` checked: each check's name -> passed, plus the loss on a short text."""

    checks: dict[str, bool] = field(default_factory=dict)
    loss: float | None = None
    problems: list[str] = field(default_factory=list)
    kind: str = "reload"  # "reload" (full reload + scoring), "headers" (file headers only), "headers+reload"

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "kind": self.kind,
            "checks": self.checks,
            "loss": self.loss,
            "problems": self.problems,
        }


def verify_model_dir(path: Path, tokenizer: Any = None) -> Verification:
    """Reload a model directory as a user would and check that it is sound.

    Checks: every id the tokenizer can emit has an embedding row; config's bos/eos/pad ids match the tokenizer;
    tied configs really share the matrix; no NaN/inf in the embeddings; a short scoring pass gives a finite loss.
    `tokenizer`: the directory's tokenizer, already loaded with AutoTokenizer (else it is loaded here).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = Verification()
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a model directory (no config.json).", "Pass the OUT of a transplant.")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto").eval()
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as error:
        raise InputError(f"Could not reload {path}: {error}", "Check that the directory is complete.") from error
    except Exception as error:  # the tokenizers library raises bare Exceptions for files it cannot parse
        raise InputError(f"Could not reload the tokenizer in {path}: {error}", "Re-save the tokenizer.") from error
    matrices = read_embeddings(model)

    def check(name: str, ok: bool, problem: str) -> None:
        result.checks[name] = bool(ok)
        if not ok:
            result.problems.append(problem)

    check(
        "rows_cover_tokenizer",
        matrices.rows >= len(tokenizer),
        f"{matrices.rows} rows < {len(tokenizer)} ids",
    )
    for role in ("bos", "eos", "pad"):
        configured = getattr(model.config, f"{role}_token_id", None)
        declared = getattr(tokenizer, f"{role}_token_id", None)
        check(
            f"{role}_id_matches",
            id_matches(configured, declared),
            f"config {role}_token_id={configured}, tokenizer says {declared}",
        )
    tie_config = bool(getattr(model.config, "tie_word_embeddings", False))
    check(
        "tied_as_configured",
        matrices.tied == tie_config,
        f"tie_word_embeddings={tie_config} but tied={matrices.tied}",
    )
    finite = bool(torch.isfinite(matrices.input).all()) and (
        matrices.output is None or bool(torch.isfinite(matrices.output).all())
    )
    check("finite_embeddings", finite, "embedding matrices contain NaN or infinite values")
    ids = tokenizer(VERIFY_TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    if ids.shape[1] < 2:  # a vocabulary that cannot spell the text (no loss on < 2 tokens): score some ids instead
        ids = (torch.arange(16) % max(1, min(len(tokenizer), matrices.rows)))[None]
    with torch.inference_mode():
        loss = float(model(input_ids=ids, labels=ids).loss)
    result.loss = loss
    check("finite_loss", math.isfinite(loss), f"scoring a short text gave loss {loss}")
    return result


def id_matches(configured: Any, declared: Any) -> bool:
    """Config ids may be a list (several eos ids): the tokenizer's id must be among them."""
    if isinstance(configured, list):
        return declared is None or declared in configured
    return bool(configured == declared)


def assert_verified(verification: Verification) -> None:
    if not verification.passed:
        raise TokenAdaptError(
            "The transplanted model failed verification: " + "; ".join(verification.problems) + ".",
            "Nothing was written to OUT. This is a bug in tokenadapt or an unusual checkpoint: please report it "
            "with transplant_report.json from a run with --no-verify.",
        )
