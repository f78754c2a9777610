"""RowSparseHead: the same logits and gradients as autograd's dense head on the rows it keeps, zero elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from tests.conftest import tiny_llama
from tokenadapt.healing.data import Sequence
from tokenadapt.healing.head import RowSparseHead, output_head
from tokenadapt.healing.trainer import _Trainable, _Trainer
from tokenadapt.options import HealOptions


def test_row_sparse_head_matches_the_dense_gradient_on_its_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, generator=generator, requires_grad=True)
    weight = torch.randn(9, 4, generator=generator, requires_grad=True)
    targets = torch.tensor([1, 3, 3, 7, 0])
    rows = torch.tensor([1, 3, 8])

    dense_hidden, dense_weight = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(dense_hidden @ dense_weight.T, targets).backward()
    logits = RowSparseHead.apply(hidden, weight, rows)
    assert torch.allclose(logits, dense_hidden @ dense_weight.T)
    torch.nn.functional.cross_entropy(logits, targets).backward()

    assert hidden.grad is not None and weight.grad is not None and dense_weight.grad is not None
    assert torch.allclose(hidden.grad, dense_hidden.grad, atol=1e-6)  # type: ignore[arg-type]
    assert torch.allclose(weight.grad[rows], dense_weight.grad[rows], atol=1e-6)
    others = torch.ones(9, dtype=torch.bool)
    others[rows] = False
    assert (weight.grad[others] == 0).all() and (dense_weight.grad[others] != 0).any()


def test_output_head_only_where_logits_are_the_last_hidden_state_times_the_matrix() -> None:
    model = tiny_llama(30)
    assert output_head(model) is model.get_input_embeddings().weight  # tied
    model.lm_head = torch.nn.Linear(model.config.hidden_size, 30, bias=True)
    assert output_head(model) is None  # a bias the shortcut would drop


def test_a_heal_step_through_the_row_sparse_head_equals_the_plain_one() -> None:
    weights = []
    for shortcut in (True, False):
        model = tiny_llama(40)
        weight = model.get_input_embeddings().weight
        trainable = _Trainable([weight], torch.arange(40) >= 10)
        options = HealOptions(fit="rows", learning_rate=1e-2, warmup_steps=0)
        tokenizer = SimpleNamespace(bos_token_id=None)
        trainer = _Trainer(model, tokenizer, None, None, trainable, options)
        assert trainer.head is not None
        if not shortcut:
            trainer.head = None
        for ids in ([1, 12, 13, 5, 12], [20, 3, 21, 13]):
            trainer._step([Sequence(0, np.array(ids), np.arange(1, len(ids) + 1), "x" * len(ids))])
        weights.append(weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
    assert not torch.equal(weights[0], tiny_llama(40).get_input_embeddings().weight)
