"""The affine fit: AffineHead's gradients equal autograd's on the materialised matrix; a heal step through the map
(input hook + head) equals plain autograd through a model whose new rows are A @ e + b."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_llama
from tokenadapt.errors import InputError
from tokenadapt.healing.affine import AffineHead, AffineRows, Lookup, embedding_scale
from tokenadapt.healing.data import Sequence
from tokenadapt.healing.trainer import _Trainable, _Trainer, piece_lookups, untie_output
from tokenadapt.options import HealOptions
from tokenadapt.vocab.decompose import Decomposition


def features(affine: AffineRows, lookups: list[Lookup]) -> torch.Tensor:
    """The map's input [N, d + k...] written out: the estimates, then each lookup's rows (zeros for index -1)."""
    parts = [affine.base]
    for lookup in lookups:
        rows = lookup.table[lookup.index.clamp(min=0)]
        parts.append(rows * (lookup.index >= 0).unsqueeze(1))
    return torch.cat(parts, dim=1)


def model_and_twin(vocabulary: int) -> tuple[Any, Any]:
    """A tiny tied model and an identical copy, for an autograd reference beside the trainer's run."""
    model, twin = tiny_llama(vocabulary), tiny_llama(vocabulary)
    twin.load_state_dict(model.state_dict())
    return model, twin


def loss_with_matrix(model: Any, matrix: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The mean next-token loss of `ids` under `model` with its tied matrix replaced by `matrix` (differentiable)."""
    tokens = torch.tensor([ids])
    weights = {"model.embed_tokens.weight": matrix, "lm_head.weight": matrix}
    logits = torch.func.functional_call(model, weights, (tokens,)).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, tokens[0, 1:], reduction="mean")


@pytest.mark.parametrize("with_lookups", [False, True])
def test_affine_head_gradients_match_autograd_through_the_mapped_matrix(with_lookups: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(9, 4, generator=generator)
    mask = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    table = torch.randn(3, 6, generator=generator)  # two features read from it, one index shared, one missing
    lookups = [Lookup(table, torch.tensor([2, 0, 2, -1, 1])), Lookup(table, torch.tensor([1, 1, 0, 2, -1]))]
    lookups = lookups if with_lookups else []
    affine = AffineRows(weight, mask, lookups)
    width = 4 + 6 * len(lookups)
    assert affine.A.shape == (4, width) and torch.equal(affine.base, weight[mask])
    with torch.no_grad():
        affine.A.add_(0.1 * torch.randn(4, width, generator=generator))
        affine.b.copy_(torch.randn(4, generator=generator))
    affine.materialize()
    hidden = torch.randn(5, 4, generator=generator, requires_grad=True)
    targets = torch.tensor([1, 3, 2, 7, 0])

    reference_A = affine.A.detach().clone().requires_grad_()
    reference_b = affine.b.detach().clone().requires_grad_()
    reference_hidden = hidden.detach().clone().requires_grad_()
    full = weight.clone().index_put((affine.rows,), features(affine, lookups) @ reference_A.T + reference_b)
    torch.nn.functional.cross_entropy(reference_hidden @ full.T, targets).backward()

    logits = AffineHead.apply(hidden, affine.weight, affine.A, affine.b, affine)
    assert torch.allclose(logits, reference_hidden @ full.T, atol=1e-6)
    torch.nn.functional.cross_entropy(logits, targets).backward()
    assert affine.A.grad is not None and affine.b.grad is not None and hidden.grad is not None
    assert torch.allclose(affine.A.grad, reference_A.grad, atol=1e-6)  # type: ignore[arg-type]
    assert torch.allclose(affine.b.grad, reference_b.grad, atol=1e-6)  # type: ignore[arg-type]
    assert torch.allclose(hidden.grad, reference_hidden.grad, atol=1e-6)  # type: ignore[arg-type]
    assert torch.equal(weight[~mask], full[~mask].detach())  # unmapped rows are never touched


@pytest.mark.parametrize("with_lookups", [False, True])
def test_a_heal_step_through_the_map_equals_autograd_on_a_model_with_mapped_rows(with_lookups: bool) -> None:
    ids = [1, 12, 13, 5, 12, 30, 2]
    model, reference_model = model_and_twin(40)
    weight = model.get_input_embeddings().weight
    mask = torch.arange(40) >= 10
    # features as --map-features pieces reads them: rows of another model's matrix, some tokens without
    other = tiny_llama(30, seed=1).get_input_embeddings().weight.detach()
    index = torch.arange(30) % 29 - (torch.arange(30) % 7 == 0).long() * 100
    lookups = [Lookup(other, index.clamp(min=-1)), Lookup(other, index.flip(0).clamp(min=-1))] if with_lookups else []

    options = HealOptions(fit="affine", warmup_steps=0, residual_learning_rate=0.0)  # the map alone
    trainable = _Trainable([weight], mask)
    tokenizer = SimpleNamespace(bos_token_id=None)
    trainer = _Trainer(model, tokenizer, None, None, trainable, options, [lookups])
    trainer._step([Sequence(0, np.array(ids), np.arange(1, len(ids) + 1), "x" * len(ids))])
    affine = trainer.maps[0]
    assert affine.A.grad is not None and affine.b.grad is not None

    # reference: the tied matrix as a differentiable function of A and b, the model's own forward and loss
    base = features(affine, lookups)
    A = torch.eye(weight.shape[1], base.shape[1]).requires_grad_()
    b = torch.zeros(weight.shape[1], requires_grad=True)
    matrix = reference_model.get_input_embeddings().weight.detach().index_put((mask.nonzero()[:, 0],), base @ A.T + b)
    loss_with_matrix(reference_model, matrix, ids).backward()
    assert A.grad is not None and b.grad is not None
    assert torch.allclose(affine.A.grad, A.grad, atol=1e-5)
    assert torch.allclose(affine.b.grad, b.grad, atol=1e-5)
    # after the step the matrix holds the mapped rows, and the copied rows are untouched
    assert torch.allclose(weight[mask], base @ affine.A.detach().T + affine.b.detach())
    assert torch.equal(weight[~mask], reference_model.get_input_embeddings().weight[~mask])


def test_embedding_scale_is_read_from_the_module() -> None:
    model = tiny_llama(20)
    assert embedding_scale(model) == pytest.approx(1.0)

    class Scaled(torch.nn.Embedding):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return super().forward(input) * 3.0

    class Shifted(torch.nn.Embedding):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return super().forward(input) + 1.0

    for module_class, expected in ((Scaled, 3.0), (Shifted, None)):
        module = module_class(20, model.config.hidden_size)
        module.weight.data.copy_(model.get_input_embeddings().weight.data)
        model.set_input_embeddings(module)
        if expected is None:
            with pytest.raises(InputError, match="--fit rows"):
                embedding_scale(model)
        else:
            assert embedding_scale(model) == pytest.approx(expected)


def test_a_head_with_a_bias_is_refused_with_the_fix() -> None:
    model = tiny_llama(30)
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(model.config.hidden_size, 30, bias=True)
    trainable = _Trainable([model.get_input_embeddings().weight, model.lm_head.weight], torch.arange(30) >= 10)
    with pytest.raises(InputError, match="Heal with --fit rows"):
        _Trainer(model, SimpleNamespace(bos_token_id=None), None, None, trainable, HealOptions(fit="affine"))


@pytest.mark.parametrize("tied", [True, False])
def test_the_map_moves_every_mapped_row_even_unseen_ones_and_lowers_the_loss(tied: bool) -> None:
    model = tiny_llama(80, tied=tied)
    weights = [model.get_input_embeddings().weight] + ([] if tied else [model.lm_head.weight])
    before = [w.detach().clone() for w in weights]
    mask = torch.arange(80) >= 10  # 70 mapped rows > d + 1 = 33, so an affine relation is not automatic
    options = HealOptions(
        fit="affine", learning_rate=1e-2, map_learning_rate=1e-2, warmup_steps=0, residual_learning_rate=0.0
    )
    trainer = _Trainer(model, SimpleNamespace(bos_token_id=None), None, None, _Trainable(weights, mask), options)
    batch = [Sequence(0, np.array([1, 12, 13, 5, 12, 30, 2, 13]), np.arange(1, 9), "x" * 8)]
    losses = [trainer._step(batch) for _ in range(5)]
    assert losses[-1] < losses[0]
    for weight, original in zip(weights, before, strict=True):
        after = weight.detach()
        assert torch.equal(after[~mask], original[~mask])  # copied rows byte-identical
        assert (after[mask] != original[mask]).any(dim=1).all()  # every mapped row moved, ids 14..79 never seen
        design = torch.cat([original[mask].double(), torch.ones(int(mask.sum()), 1, dtype=torch.float64)], dim=1)
        solution = torch.linalg.lstsq(design, after[mask].double()).solution
        assert torch.allclose(design @ solution, after[mask].double(), atol=1e-5)  # one affine map of the estimates
        body = [p for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n]
        assert all(not p.requires_grad for p in body)


def test_untie_gives_the_head_its_own_copy_and_the_saved_model_stays_untied(tmp_path: Path) -> None:
    model = tiny_llama(30)
    embedding = model.get_input_embeddings().weight
    assert untie_output(model)
    head = model.get_output_embeddings().weight
    assert head.data_ptr() != embedding.data_ptr() and torch.equal(head, embedding)
    assert not untie_output(model)  # already untied: nothing to do
    with torch.no_grad():
        head[3] += 1.0
    assert not torch.equal(head[3], embedding[3])
    model.save_pretrained(str(tmp_path))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert not reloaded.config.tie_word_embeddings
    assert torch.equal(reloaded.get_output_embeddings().weight, head)
    assert torch.equal(reloaded.get_input_embeddings().weight, embedding)


def test_piece_lookups_read_the_old_rows_of_each_tokens_first_and_last_piece() -> None:
    old = torch.arange(20.0).reshape(10, 2)
    pieces = Decomposition(
        torch.tensor([[4, 7, 2], [5, 0, 0], [0, 0, 0]]),
        torch.tensor([[True, True, True], [True, False, False], [False, False, False]]),
    )
    lookups = piece_lookups(pieces, old)
    affine = AffineRows(torch.zeros(5, 2), torch.tensor([False, True, True, False, True]), lookups)
    assert features(affine, lookups)[:, 2:].tolist() == [[8.0, 9.0, 4.0, 5.0], [10.0, 11.0, 10.0, 11.0], [0.0] * 4]
    with torch.no_grad():  # the map reading only the first piece: the rows become those pieces' old rows
        affine.A.zero_()
        affine.A[:, 2:4] = torch.eye(2)
    affine.materialize()
    assert affine.weight[[1, 2, 4]].tolist() == [[8.0, 9.0], [10.0, 11.0], [0.0, 0.0]]
    assert affine.mapped(torch.tensor([2, 3])).tolist() == [[10.0, 11.0], [0.0, 0.0]]


def test_per_row_residuals_get_autograds_gradient_on_the_batchs_rows_only() -> None:
    ids = [1, 12, 13, 5, 12, 30, 2]
    model, reference_model = model_and_twin(40)
    weight = model.get_input_embeddings().weight
    mask = torch.arange(40) >= 10
    options = HealOptions(fit="affine", warmup_steps=0, residual_learning_rate=1e-2)
    trainer = _Trainer(model, SimpleNamespace(bos_token_id=None), None, None, _Trainable([weight], mask), options)
    trainer._step([Sequence(0, np.array(ids), np.arange(1, len(ids) + 1), "x" * len(ids))])
    affine = trainer.maps[0]
    assert affine.delta is not None and affine.delta.grad is not None

    base = features(affine, [])
    delta = torch.zeros(int(mask.sum()), weight.shape[1], requires_grad=True)
    rows = base + delta  # A is the identity and b zero before the step
    matrix = reference_model.get_input_embeddings().weight.detach().index_put((mask.nonzero()[:, 0],), rows)
    loss_with_matrix(reference_model, matrix, ids).backward()
    assert delta.grad is not None
    in_batch = torch.isin(affine.rows, torch.tensor(ids))  # the mapped rows of tokens 12, 13 and 30
    assert int(in_batch.sum()) == 3
    assert torch.allclose(affine.delta.grad[in_batch], delta.grad[in_batch], atol=1e-5)
    assert (delta.grad[~in_batch] != 0).any()  # autograd pushes the other rows too; the residuals ignore that
    assert torch.equal(affine.delta.grad[~in_batch], torch.zeros_like(delta.grad[~in_batch]))
    # after the step: the batch's residuals moved, the others are exactly 0, the matrix holds map + residual
    assert (affine.delta.detach()[in_batch] != 0).all(dim=1).all()
    assert torch.equal(affine.delta.detach()[~in_batch], torch.zeros_like(delta.grad[~in_batch]))
    mapped = base @ affine.A.detach().T + affine.b.detach() + affine.delta.detach()
    assert torch.allclose(weight[mask], mapped)
    assert torch.equal(weight[~mask], reference_model.get_input_embeddings().weight[~mask])


def test_a_batch_without_mapped_tokens_trains_no_residual_and_the_next_batch_starts_clean() -> None:
    affine = AffineRows(torch.randn(6, 3), torch.tensor([False, True, False, True, True, False]), residual=True)
    affine.start_step(torch.tensor([0, 2, 5, 2]))  # copied rows only
    assert affine.step_delta is None
    assert torch.equal(affine.mapped(torch.tensor([0, 2])), torch.zeros(2, 3))
    affine.start_step(torch.tensor([3, 0, 3]))
    assert affine.step_delta is not None and affine.active.tolist() == [1]  # row 3 is the second mapped row
    affine.mapped(torch.tensor([3, 0])).sum().backward()
    affine.finish_step()
    assert affine.delta is not None and affine.delta.grad is not None
    assert affine.delta.grad.abs().sum(dim=1).tolist() == [0.0, 3.0, 0.0]
    affine.start_step(torch.tensor([1]))
    affine.mapped(torch.tensor([1])).sum().backward()
    affine.finish_step()
    assert affine.delta.grad.abs().sum(dim=1).tolist() == [3.0, 0.0, 0.0]  # the last step's row is cleared


def test_rows_the_map_keeps_train_by_their_residuals_alone() -> None:
    ids = [1, 12, 13, 5, 12, 30, 2, 31]
    model, reference_model = model_and_twin(40)
    weight = model.get_input_embeddings().weight
    original = weight.detach().clone()
    mask = torch.arange(40) >= 10
    kept = torch.arange(40) >= 30  # trained rows the map leaves alone (as --rows all leaves the copied rows)
    # the kept rows' corrections at half the rate: for Adam the same as rows base + 0.5 * delta
    options = HealOptions(fit="affine", warmup_steps=0, residual_learning_rate=1e-2, copied_learning_rate=5e-3)
    trainable = _Trainable([weight], mask, kept=kept)
    trainer = _Trainer(model, SimpleNamespace(bos_token_id=None), None, None, trainable, options)
    trainer._step([Sequence(0, np.array(ids), np.arange(1, len(ids) + 1), "x" * len(ids))])
    affine = trainer.maps[0]
    assert affine.A.grad is not None and affine.b.grad is not None and affine.delta is not None

    # reference: mapped rows A @ e + b + delta, kept rows e + 0.5 delta, differentiable in all three
    base = features(affine, [])
    A = torch.eye(weight.shape[1]).requires_grad_()
    b = torch.zeros(weight.shape[1], requires_grad=True)
    delta = torch.zeros(int(mask.sum()), weight.shape[1], requires_grad=True)
    follows = ~kept[mask]
    scale = torch.where(follows, 1.0, 0.5).unsqueeze(1)
    rows = torch.where(follows.unsqueeze(1), base @ A.T + b, base) + delta * scale
    matrix = reference_model.get_input_embeddings().weight.detach().index_put((mask.nonzero()[:, 0],), rows)
    loss_with_matrix(reference_model, matrix, ids).backward()
    assert A.grad is not None and b.grad is not None and delta.grad is not None
    assert torch.allclose(affine.A.grad, A.grad, atol=1e-5)
    assert torch.allclose(affine.b.grad, b.grad, atol=1e-5)
    assert affine.delta.grad is not None
    in_batch = torch.isin(affine.rows, torch.tensor(ids))  # 12, 13 follow the map; 30, 31 are kept
    assert torch.allclose(affine.delta.grad[in_batch], delta.grad[in_batch], atol=1e-5)
    # after the step: kept rows are their start plus half their residual (the moved map never reaches them)
    assert not torch.allclose(affine.A.detach(), torch.eye(weight.shape[1]))
    kept_rows = kept.nonzero()[:, 0]
    assert torch.allclose(weight[kept_rows], original[kept_rows] + 0.5 * affine.delta.detach()[~follows])
    assert not torch.equal(weight[[30, 31]], original[[30, 31]]) and torch.equal(weight[32:], original[32:])
    mapped = base[follows] @ affine.A.detach().T + affine.b.detach() + affine.delta.detach()[follows]
    assert torch.allclose(weight[10:30], mapped)
    assert torch.equal(weight[:10], original[:10])


def test_rows_the_map_keeps_need_residuals() -> None:
    with pytest.raises(ValueError, match="residual"):
        AffineRows(torch.randn(4, 2), torch.ones(4, dtype=torch.bool), kept=torch.tensor([True, False, False, False]))
