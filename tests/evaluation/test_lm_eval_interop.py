"""A transplanted directory works with lm-evaluation-harness (`pip install 'tokenadapt[lmeval]'`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenadapt.options import TransplantOptions
from tokenadapt.transplant import transplant

lm_eval = pytest.importorskip("lm_eval", reason="the lmeval extra is not installed")


def test_lm_eval_scores_a_transplanted_directory_like_transformers(
    tied_model_dir: Path, new_tokenizer_dir: Path, tmp_path: Path
) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    out = tmp_path / "out"
    transplant(tied_model_dir, new_tokenizer_dir, out, TransplantOptions(method="subword-mean"))
    harness = HFLM(pretrained=str(out), device="cpu", batch_size=1)
    context, continuation = "Zebras eat", " grass in 1234 ways."  # not in the training corpus
    request = Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)
    ((loglikelihood, _),) = harness.loglikelihood([request])

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    # the harness encodes context and context + continuation and scores the difference, as here
    whole = tokenizer(context + continuation).input_ids
    n_context = len(tokenizer(context).input_ids)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
    expected = sum(float(log_probs[i - 1, whole[i]]) for i in range(n_context, len(whole)))
    assert loglikelihood == pytest.approx(expected, rel=2e-3)  # the harness works in float32
