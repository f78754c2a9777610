"""`tokenadapt heal`: train the rows a transplant estimated, with the transformer body frozen, on a text.

    >>> result = heal("out/smollm2-qwen2", "out/smollm2-qwen2-healed", ["wiki-en", "debref-de", "code-py"])
    >>> result.before["mean_ratio"], result.after["mean_ratio"]
    (1.47, 1.30)

Only the embedding rows of new tokens change (`--rows new`; input and output rows, or the one shared matrix of a
tied model). With `--fit affine` (the default) they change through one map of their zero-shot values,
row = A @ estimate + b (`affine.py`), so tokens the text never shows heal too; with `--fit rows` each row moves on
its own, a gradient mask zeroes every other row's gradient, and Adam without weight decay then leaves those rows
byte-identical. Each text's held-out tail (`data.split_text`) is scored before training, every
`eval_every` optimizer steps and at the end, with the same scoring code as `tokenadapt eval`; the rows of the best
held-out score are kept, and training stops early after `patience` scorings without improvement. The budget
(minutes or steps) covers the held-out scorings too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenadapt.checkpoint import assert_verified, load_causal_lm
from tokenadapt.errors import InputError
from tokenadapt.evaluation.evaluator import load_scored_model
from tokenadapt.evaluation.scoring import encode_with_byte_ends, score_text, wants_bos
from tokenadapt.file_level import verify_directory
from tokenadapt.healing.affine import AffineHead, AffineRows, Lookup, embedding_scale, install_input_hook
from tokenadapt.healing.data import HealText, Sequence, load_heal_texts, make_sequences, take_turns
from tokenadapt.healing.head import RowSparseHead, output_head
from tokenadapt.healing.objectives import chunk_distillation_terms, token_log_probs
from tokenadapt.healing.sampled import SampledAffineHead
from tokenadapt.options import FULL_VERIFY_MAX_GB, EvalOptions, HealOptions, TransplantOptions
from tokenadapt.output import check_output_path, staged_output
from tokenadapt.report import Timings, markdown_table, peak_rss_mb, time_and_memory_line, versions, write_json
from tokenadapt.tokenizer_io import load_tokenizer, save_tokenizer
from tokenadapt.transplant import REPORT_NAME
from tokenadapt.vocab import MatchMode, align_vocabularies, build_vocabulary
from tokenadapt.vocab.decompose import Decomposition, decompose
from tokenadapt.zoo import resolve_model

log = logging.getLogger("tokenadapt")
HEAL_REPORT = "heal_report.json"


@dataclass
class HealResult:
    """What a heal did (saved as heal_report.json): held-out bits per byte before, during and after, and its cost.

    `curve[i]`: step, minutes since training began, tokens trained, held-out bits per byte per text and their
    mean, and, with a teacher, `mean_ratio` (the mean over texts of bits per byte / the teacher's).
    """

    out_dir: str
    model: str
    teacher: str | None
    objective: str
    options: dict[str, Any]
    texts: list[dict[str, Any]]
    rows: dict[str, Any]
    teacher_bits_per_byte: dict[str, float] | None
    curve: list[dict[str, Any]]
    before: dict[str, Any]
    after: dict[str, Any]
    best_step: int
    steps: int
    tokens_trained: int
    stopped: str
    timings: dict[str, float]
    peak_rss_mb: float
    versions: dict[str, str]
    transplant: dict[str, Any] | None = None
    command: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def gap_recovered(self) -> float | None:
        """Share of the zero-shot gap to the teacher closed on held-out text: 1 - (after - 1) / (before - 1)."""
        before, after = self.before.get("mean_ratio"), self.after.get("mean_ratio")
        if before is None or after is None or before <= 1.0:
            return None
        return 1.0 - (after - 1.0) / (before - 1.0)

    def to_markdown(self) -> str:
        headers = ["text", "held-out bytes", "bits/byte before", "bits/byte after"]
        if self.teacher_bits_per_byte:
            headers += ["teacher bits/byte", "ratio before", "ratio after"]
        table = []
        for text in self.texts:
            name = text["name"]
            row: list[Any] = [name, text["held_out_bytes"], self.before["bits_per_byte"][name]]
            row.append(self.after["bits_per_byte"][name])
            if self.teacher_bits_per_byte:
                teacher = self.teacher_bits_per_byte[name]
                row += [teacher, f"{self.before['ratio'][name]:.3f}x", f"{self.after['ratio'][name]:.3f}x"]
            table.append(row)
        lines = [
            f"## Heal: {self.model} ({self.objective}, rows {self.options['rows']}, "
            f"fit {self.rows.get('fit', 'rows')}{' + per-row residuals' if self.rows.get('residuals') else ''}"
            f"{', untied' if self.rows.get('untied') else ''})",
            "",
            f"Output: `{self.out_dir}`; trained {self.rows['trained']} of {self.rows['total']} rows "
            f"for {self.steps} steps ({self.tokens_trained} tokens); kept step {self.best_step}; stopped: "
            f"{self.stopped}.",
            "",
            markdown_table(headers, table),
            "",
        ]
        recovered = self.gap_recovered
        if recovered is not None:
            lines.append(
                f"Mean held-out ratio to the teacher: {self.before['mean_ratio']:.3f}x -> "
                f"{self.after['mean_ratio']:.3f}x ({recovered:.0%} of the gap closed)."
            )
        lines.append(time_and_memory_line(self.timings, self.peak_rss_mb))
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class _Trainable:
    """The parameters being trained (one for a tied model, two when untied) and the mask of rows that may change."""

    parameters: list[torch.nn.Parameter]
    mask: torch.Tensor  # bool [rows]
    pieces: Decomposition | None = None  # the trained rows' old-tokenizer pieces, in row order (none: copied rows)
    kept: torch.Tensor | None = None  # bool [rows]: trained rows the map leaves alone (--rows all with residuals)

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.parameters]

    def restore(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for parameter, values in zip(self.parameters, saved, strict=True):
                parameter.copy_(values)


def heal(
    model: str | Path,
    out: str | Path,
    texts: list[str],
    options: HealOptions | None = None,
    progress: bool = False,
    command: str | None = None,
) -> HealResult:
    """Heal the transplanted model at `model` on `texts` and write the result to `out`; see the module docstring."""
    options = (options or HealOptions()).validated()
    budget_seconds, budget_steps = options.budget_limit()
    timings = Timings()
    out_path = Path(out)
    with timings.stage("load"):
        resolved = resolve_model(str(model))
        check_output_path(out_path, [resolved.path], options.overwrite)
        transplant_report = _read_transplant_report(resolved.path)
        teacher_spec = options.teacher or _teacher_from_report(transplant_report)
        if options.objective == "distill" and not teacher_spec:
            raise InputError(
                "--objective distill needs the original model as teacher, and none is known.",
                "Add --teacher MODEL (the model the transplant started from).",
            )
        heal_texts = load_heal_texts(texts, options.split, options.held_out_bytes, options.max_train_bytes)
        student = load_causal_lm(resolved.path)
        stored_dtype = next(student.parameters()).dtype
        student = student.float()
        tokenizer = load_tokenizer(resolved.path)
        teacher, teacher_tokenizer = (None, None)
        if teacher_spec:
            teacher, teacher_tokenizer = load_scored_model(teacher_spec)
            teacher = teacher.float()
    untied = options.untie and untie_output(student)
    teacher_rows = None if teacher is None else int(teacher.get_input_embeddings().weight.shape[0])
    trainable = _trainable_rows(student, tokenizer, teacher_tokenizer, teacher_rows, options, transplant_report)
    extra = None
    if trainable.pieces is not None and teacher is not None:
        extra = [piece_lookups(trainable.pieces, old) for old in _teacher_matrices(teacher, len(trainable.parameters))]
    eval_options = EvalOptions(context=options.context, stride=options.context)
    teacher_bpb: dict[str, float] | None = None
    if teacher is not None:
        with timings.stage("score teacher"):
            teacher_bpb = {t.name: _held_out_bpb(teacher, teacher_tokenizer, t, eval_options) for t in heal_texts}
        if options.objective != "distill":
            teacher = None  # frees its memory: ntp only needed its held-out scores
    with timings.stage("tokenize"):
        length = options.context - int(wants_bos(tokenizer, "auto"))
        per_text = [make_sequences(tokenizer, t.train, i, length) for i, t in enumerate(heal_texts)]
    trainer = _Trainer(student, tokenizer, teacher, teacher_tokenizer, trainable, options, extra)
    with timings.stage("train"):
        curve, best_step, steps, tokens, stopped = trainer.run(
            per_text, heal_texts, teacher_bpb, eval_options, budget_seconds, budget_steps, progress
        )
    best = next(point for point in curve if point["step"] == best_step)
    result = HealResult(
        out_dir=str(out_path),
        model=str(model),
        teacher=teacher_spec or None,
        objective=options.objective,
        options=options.to_dict(),
        texts=[t.describe() for t in heal_texts],
        rows={
            "trained": int(trainable.mask.sum()),
            "total": int(trainable.mask.numel()),
            "kind": options.rows,
            "fit": options.fit,
            "map_features": None if options.fit != "affine" else "pieces" if extra else "estimate",
            "residuals": any(m.delta is not None for m in trainer.maps),
            "corrections_only": int((~trainer.maps[0].follows).sum()) if trainer.maps else 0,
            "untied": untied,
        },
        teacher_bits_per_byte=teacher_bpb,
        curve=curve,
        before=_summary(curve[0], teacher_bpb),
        after=_summary(best, teacher_bpb),
        best_step=best_step,
        steps=steps,
        tokens_trained=tokens,
        stopped=stopped,
        timings=timings,
        peak_rss_mb=0.0,
        versions=versions(),
        transplant=_transplant_summary(transplant_report),
        command=command,
    )
    if any(text.split == "test" for text in heal_texts):
        result.warnings.append("healed on a test split: `tokenadapt eval` on the same text is no longer unseen")
    with staged_output(out_path, [resolved.path], options.overwrite) as tmp, timings.stage("save"):
        student.to(stored_dtype).save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        if transplant_report is not None:
            shutil.copyfile(resolved.path / REPORT_NAME, tmp / REPORT_NAME)
        verification = verify_directory(tmp, int(FULL_VERIFY_MAX_GB * 1e9))
        assert_verified(verification)
        result.peak_rss_mb = round(peak_rss_mb(), 1)
        write_json(tmp / HEAL_REPORT, result.to_dict())
        (tmp / "README.md").write_text(model_card(result), encoding="utf-8")
    return result


class _Trainer:
    """The optimisation loop: accumulate `batch_size` sequences, step Adam, score the held-out tails now and then."""

    def __init__(
        self,
        student: Any,
        tokenizer: Any,
        teacher: Any,
        teacher_tokenizer: Any,
        trainable: _Trainable,
        options: HealOptions,
        extra: list[list[Lookup]] | None = None,
    ) -> None:
        self.student, self.tokenizer = student, tokenizer
        self.teacher, self.teacher_tokenizer = teacher, teacher_tokenizer
        self.trainable, self.options = trainable, options
        self.bos = tokenizer.bos_token_id if wants_bos(tokenizer, "auto") else None
        self.teacher_bos = (
            teacher_tokenizer.bos_token_id if teacher is not None and wants_bos(teacher_tokenizer, "auto") else None
        )
        for parameter in student.parameters():
            parameter.requires_grad_(False)
        # rows this step may move: the trainable rows, narrowed to the batch's tokens with sparse updates
        self.step_mask = trainable.mask.to(torch.float32).unsqueeze(1)
        self.step_rows = trainable.mask.nonzero().squeeze(1)  # the same rows as ids [R]
        self.maps: list[AffineRows] = []
        self.head_map: AffineRows | None = None
        if options.fit == "affine":
            self._setup_affine(student, trainable, options, extra)
        else:
            for parameter in trainable.parameters:
                parameter.requires_grad_(True)
                parameter.register_hook(lambda grad: grad * self.step_mask)
        if not options.train_inputs:
            # the input rows' output is cut from the graph, so nothing before the head is recorded or backpropagated
            student.get_input_embeddings().register_forward_hook(lambda module, args, output: output.detach())
        # with sparse updates, the head's weight gradient is needed for the batch's rows only
        self.head = output_head(student) if options.sparse_updates and options.fit == "rows" else None
        self.decoder = student.get_decoder() if self.head is not None or self.head_map is not None else None
        # Adam keeps moving a row for some steps after its token left the batch (its momentum decays slower than
        # its normalisation: a token seen once drifts about 5 learning rates), which measured better than
        # SparseAdam's lazy rows, whose value and moments change only at steps whose batch holds the token.
        self.lazy = options.optimizer == "lazy-adam"
        self.rng = torch.Generator().manual_seed(options.seed)  # the draws of --gradient-samples
        groups: list[dict[str, Any]] = (
            [
                {"params": [m.A for m in self.maps], "base_lr": options.map_learning_rate},
                {"params": [m.b for m in self.maps], "base_lr": options.learning_rate},
            ]
            if self.maps
            else [{"params": trainable.parameters, "base_lr": options.learning_rate}]
        )
        if deltas := [m.delta for m in self.maps if m.delta is not None]:
            groups.append({"params": deltas, "base_lr": options.residual_learning_rate})
        self.optimizer = make_optimizer(options.optimizer, groups, options.learning_rate)

    def _setup_affine(
        self, student: Any, trainable: _Trainable, options: HealOptions, extra: list[list[Lookup]] | None
    ) -> None:
        """One map per trained matrix (one for a tied model); the head's map needs a plain linear head.
        `extra[i]`: more features of the rows of `trainable.parameters[i]` for its map to read."""
        head_weight = output_head(student)
        if head_weight is None:
            raise InputError(
                "--fit affine needs the model's logits to be its last hidden state times the output matrix "
                "(no bias, logit scale or soft-capping), and this model's are not.",
                "Heal with --fit rows.",
            )
        features = extra or [[] for _ in trainable.parameters]
        self.maps = [
            AffineRows(
                parameter,
                trainable.mask,
                more,
                options.residual_learning_rate > 0,
                trainable.kept,
                options.copied_learning_rate / options.residual_learning_rate if trainable.kept is not None else 1.0,
            )
            for parameter, more in zip(trainable.parameters, features, strict=True)
        ]
        self.head_map = next(m for m in self.maps if m.weight.data_ptr() == head_weight.data_ptr())
        if options.train_inputs:
            install_input_hook(student, self.maps[0], embedding_scale(student))

    def run(
        self,
        per_text: list[list[Sequence]],
        texts: list[HealText],
        teacher_bpb: dict[str, float] | None,
        eval_options: EvalOptions,
        budget_seconds: float | None,
        budget_steps: int | None,
        progress: bool,
    ) -> tuple[list[dict[str, Any]], int, int, int, str]:
        """(curve, best step, steps taken, tokens trained, why it stopped)."""
        torch.manual_seed(self.options.seed)
        stream = take_turns(per_text, self.options.seed)
        start = time.perf_counter()
        curve = [{**self._score(texts, teacher_bpb, eval_options, 0, 0, start), "minutes": 0.0}]  # before training
        eval_seconds = time.perf_counter() - start
        best_value, best_step, best_rows = curve[0]["mean_bits_per_byte"], 0, self.trainable.snapshot()
        stale, steps, tokens, step_seconds, stopped = 0, 0, 0, 0.0, "budget"
        bar = tqdm(total=budget_steps, desc="heal", unit="step", disable=not progress)
        bar.set_postfix(held_out_bpb=f"{best_value:.4f}")
        while True:
            elapsed = time.perf_counter() - start
            if budget_steps is not None and steps >= budget_steps:
                break
            if budget_seconds is not None and elapsed + step_seconds + eval_seconds > budget_seconds:
                break
            used = max(  # share of the budget spent
                steps / budget_steps if budget_steps else 0.0,
                elapsed / budget_seconds if budget_seconds else 0.0,
            )
            self._set_learning_rate(steps, used)
            step_start = time.perf_counter()
            batch = [next(stream)[0] for _ in range(self.options.batch_size)]
            loss = self._step(batch)
            if not math.isfinite(loss):
                stopped = f"loss became {loss} at step {steps + 1}: lower --learning-rate"
                break
            steps += 1
            tokens += sum(len(s.ids) for s in batch)
            step_seconds = time.perf_counter() - step_start
            bar.update(1)
            if steps % self.options.eval_every:
                continue
            eval_start = time.perf_counter()
            point = self._score(texts, teacher_bpb, eval_options, steps, tokens, start)
            eval_seconds = time.perf_counter() - eval_start
            curve.append(point)
            bar.set_postfix(held_out_bpb=f"{point['mean_bits_per_byte']:.4f}", loss=f"{loss:.3f}")
            if point["mean_bits_per_byte"] < best_value:
                best_value, best_step, stale = point["mean_bits_per_byte"], steps, 0
                best_rows = self.trainable.snapshot()
            else:
                stale += 1
                if stale >= self.options.patience:
                    stopped = f"early stop: no held-out improvement in {stale} scorings"
                    break
        if curve[-1]["step"] != steps and stopped == "budget":
            point = self._score(texts, teacher_bpb, eval_options, steps, tokens, start)
            curve.append(point)
            if point["mean_bits_per_byte"] < best_value:
                best_step, best_rows = steps, self.trainable.snapshot()
        bar.close()
        self.trainable.restore(best_rows)
        return curve, best_step, steps, tokens, stopped

    def _set_learning_rate(self, step: int, used: float) -> None:
        factor = learning_rate(self.options, step, used) / self.options.learning_rate  # warm-up and decay
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def _step(self, batch: list[Sequence]) -> float:
        """One optimizer step over `batch` (one sequence in memory at a time); returns the batch's mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        batch_ids = torch.from_numpy(np.concatenate([s.ids for s in batch]))
        if self.options.sparse_updates and not self.maps:
            present = torch.zeros(self.trainable.mask.numel(), dtype=torch.bool)
            present[batch_ids] = True
            self.step_mask = (self.trainable.mask & present).to(torch.float32).unsqueeze(1)
            self.step_rows = self.step_mask.squeeze(1).nonzero().squeeze(1)
        # like --sparse-updates: a residual trains only while its token is in the batch; the sampled gradient's
        # tiny pushes on other rows would become full-size Adam steps
        for affine in self.maps:
            affine.start_step(batch_ids)
        if self.options.objective == "ntp":
            weights = [len(s.ids) - (self.bos is None) for s in batch]
        else:
            weights = [1] * len(batch)
        total_weight, total_loss = max(sum(weights), 1), 0.0
        for sequence, weight in zip(batch, weights, strict=True):
            if self.options.objective == "ntp":
                loss = self._ntp_loss(sequence)  # summed nats: the batch mean is per token
            else:
                loss = self._distill_loss(sequence) * weight
            (loss / total_weight).backward()
            total_loss += float(loss.detach())
        if self.lazy:
            for parameter in self.trainable.parameters:
                if parameter.grad is not None:  # an untied input matrix has none with --no-train-inputs
                    parameter.grad = row_sparse(parameter.grad, self.step_rows)
        for affine in self.maps:
            affine.finish_step()
        self.optimizer.step()
        for affine in self.maps:
            affine.materialize()
        return total_loss / total_weight

    def _log_probs(self, model: Any, ids: np.ndarray, bos: int | None) -> torch.Tensor:
        """Log-probability of each token of `ids` under `model`: [T]; token 0 gets 0 without bos (no prediction).

        With `--fit affine` the student's head is `SampledAffineHead` (exact log-probabilities, the map's gradient
        from a sparse unbiased estimate of the softmax gradient; `--gradient-samples`) or, with 0 samples or a tiny
        vocabulary, `AffineHead` (the exact gradient); with `--fit rows`, `RowSparseHead` where its head allows it
        (weight gradient for this step's rows only)."""
        tokens = torch.from_numpy(np.concatenate([[bos], ids]) if bos is not None else ids).unsqueeze(0)
        targets = tokens[0, 1:]
        own_head = self.head_map is not None or self.head is not None  # the affine or the row-sparse head
        if model is self.student and own_head and self.decoder is not None:
            hidden = self.decoder(input_ids=tokens).last_hidden_state[0, :-1]
            samples = self.options.gradient_samples
            if (m := self.head_map) is not None and 0 < 2 * samples < m.weight.shape[0]:  # else exact is as cheap
                arguments = (m.A, m.b, m, targets, samples, self.rng, m.step_delta)
                scored = SampledAffineHead.apply(hidden, m.weight, *arguments)
            elif m is not None:
                scored = token_log_probs(AffineHead.apply(hidden, m.weight, m.A, m.b, m, m.step_delta), targets)
            else:
                scored = token_log_probs(RowSparseHead.apply(hidden, self.head, self.step_rows), targets)
        else:
            scored = token_log_probs(model(input_ids=tokens).logits[0, :-1], targets)
        return scored if bos is not None else torch.cat([scored.new_zeros(1), scored])

    def _ntp_loss(self, sequence: Sequence) -> torch.Tensor:
        return -self._log_probs(self.student, sequence.ids, self.bos).sum()

    def _distill_loss(self, sequence: Sequence) -> torch.Tensor:
        teacher_ids, teacher_ends = encode_with_byte_ends(self.teacher_tokenizer, sequence.text)
        if len(teacher_ids) < 2:
            return torch.zeros((), requires_grad=True)
        with torch.no_grad():
            teacher_lp = self._log_probs(self.teacher, np.asarray(teacher_ids, dtype=np.int64), self.teacher_bos)
        student_lp = self._log_probs(self.student, sequence.ids, self.bos)
        terms = chunk_distillation_terms(student_lp, sequence.byte_ends, teacher_lp, teacher_ends)
        return terms.mean() if terms.numel() else student_lp.sum() * 0.0

    def _score(
        self,
        texts: list[HealText],
        teacher_bpb: dict[str, float] | None,
        eval_options: EvalOptions,
        step: int,
        tokens: int,
        start: float,
    ) -> dict[str, Any]:
        """A curve point: held-out scores after `step` steps; `minutes` since `start`, this scoring included."""
        bpb = {t.name: _held_out_bpb(self.student, self.tokenizer, t, eval_options) for t in texts}
        point: dict[str, Any] = {
            "step": step,
            "minutes": round((time.perf_counter() - start) / 60, 3),
            "tokens": tokens,
            "bits_per_byte": bpb,
            "mean_bits_per_byte": float(np.mean(list(bpb.values()))),
        }
        if teacher_bpb:
            point["mean_ratio"] = float(np.mean([bpb[name] / teacher_bpb[name] for name in bpb]))
        return point


def make_optimizer(name: str, parameters: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The optimizer `--optimizer` names over parameter groups; none decays weights, so a row with a zero gradient
    history never moves."""
    if name == "lazy-adam":
        return torch.optim.SparseAdam(parameters, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=0.0)
    # fused: one pass over each tensor instead of one per Adam operation (the residuals are a [N, d] matrix)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=0.0, fused=True)


def row_sparse(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows `rows` [R] of a dense gradient [V, d] as a sparse COO tensor, the form SparseAdam updates lazily.

    >>> row_sparse(torch.ones(4, 2), torch.tensor([1, 3])).to_dense()[:, 0].tolist()
    [0.0, 1.0, 0.0, 1.0]
    """
    indices, values = rows.unsqueeze(0), grad.index_select(0, rows)
    return torch.sparse_coo_tensor(indices, values, grad.shape, is_coalesced=True, check_invariants=False)


def learning_rate(options: HealOptions, step: int, used: float) -> float:
    """The learning rate of optimizer step `step` (0-based) when `used` of the budget is spent.

    Linear warm-up over `warmup_steps`, then falling linearly to 0 as `used` -> 1 (`--decay linear`, the default),
    or constant.

    >>> learning_rate(HealOptions(learning_rate=1.0, warmup_steps=4, decay="constant"), 0, 0.0)
    0.25
    >>> learning_rate(HealOptions(learning_rate=1.0, warmup_steps=4, decay="linear"), 8, 0.75)
    0.25
    """
    warmup = min(1.0, (step + 1) / max(options.warmup_steps, 1))
    decay = max(1.0 - used, 0.0) if options.decay == "linear" else 1.0
    return options.learning_rate * warmup * decay


def _held_out_bpb(model: Any, tokenizer: Any, text: HealText, options: EvalOptions) -> float:
    return score_text(model, tokenizer, text.held_out, options).bits_per_byte


def _summary(point: dict[str, Any], teacher_bpb: dict[str, float] | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"step": point["step"], "bits_per_byte": point["bits_per_byte"]}
    if teacher_bpb:
        summary["ratio"] = {name: value / teacher_bpb[name] for name, value in point["bits_per_byte"].items()}
        summary["mean_ratio"] = point["mean_ratio"]
    return summary


def _trainable_rows(
    student: Any,
    tokenizer: Any,
    teacher_tokenizer: Any,
    teacher_rows: int | None,
    options: HealOptions,
    transplant_report: dict[str, Any] | None,
) -> _Trainable:
    """The embedding parameters and which of their rows heal may change (`--rows new`: those not copied)."""
    input_weight = student.get_input_embeddings().weight
    head = student.get_output_embeddings()
    parameters = [input_weight]
    if head is not None and head.weight.data_ptr() != input_weight.data_ptr():
        parameters.append(head.weight)
    rows = int(input_weight.shape[0])
    if options.rows == "all" and options.fit != "affine":
        return _Trainable(parameters, torch.ones(rows, dtype=torch.bool))  # every row on its own: no alignment needed
    if teacher_tokenizer is None or teacher_rows is None:
        if options.rows == "new":
            raise InputError(
                "--rows new needs to know which rows the transplant estimated, and no original model is known.",
                "Add --teacher MODEL (the model the transplant started from), or train every row with --rows all.",
            )
        if options.map_features == "pieces":
            raise InputError(
                "--map-features pieces reads the original model's rows of each token's pieces, and no original "
                "model is known.",
                "Add --teacher MODEL (the model the transplant started from), or use --map-features estimate.",
            )
        return _Trainable(parameters, torch.ones(rows, dtype=torch.bool))
    match = (transplant_report or {}).get("options", {}).get("match", TransplantOptions.match)
    old_vocab, new_vocab = build_vocabulary(teacher_tokenizer), build_vocabulary(tokenizer)
    alignment = align_vocabularies(old_vocab, new_vocab, teacher_rows, MatchMode(match))
    estimated = torch.zeros(rows, dtype=torch.bool)
    ids = torch.from_numpy(alignment.estimated_ids)
    estimated[ids[ids < rows]] = True
    mask = estimated if options.rows == "new" else torch.ones(rows, dtype=torch.bool)
    # --rows all with the map: the map writes the estimated rows, the copied rows train by their corrections alone
    kept = ~estimated if options.rows == "all" and options.fit == "affine" and options.residual_learning_rate else None
    pieces = None
    if options.reads_pieces:
        spelled = decompose(old_vocab, new_vocab, estimated.nonzero().squeeze(1).numpy(), teacher_rows)
        pieces = spread_pieces(spelled, estimated[mask])
    return _Trainable(parameters, mask, pieces, kept)


def spread_pieces(spelled: Decomposition, among: torch.Tensor) -> Decomposition:
    """The pieces of the rows `among` [N] marks, spread over all N rows (rows it does not mark have none).

    >>> spelled = Decomposition(torch.tensor([[4, 5]]), torch.tensor([[True, True]]))
    >>> d = spread_pieces(spelled, torch.tensor([False, True]))
    >>> d.pieces.tolist(), d.mask.tolist()
    ([[0, 0], [4, 5]], [[False, False], [True, True]])
    """
    pieces = spelled.pieces.new_zeros(among.shape[0], spelled.pieces.shape[1])
    mask = spelled.mask.new_zeros(among.shape[0], spelled.mask.shape[1])
    pieces[among], mask[among] = spelled.pieces, spelled.mask
    return Decomposition(pieces, mask)


def _teacher_matrices(teacher: Any, count: int) -> list[torch.Tensor]:
    """The teacher's input matrix, and its output matrix when the student's trained parameters are two."""
    matrices = [teacher.get_input_embeddings().weight.detach()]
    if count == 2:
        head = teacher.get_output_embeddings()
        matrices.append(head.weight.detach() if head is not None else matrices[0])
    return matrices


def piece_lookups(pieces: Decomposition, old: torch.Tensor) -> list[Lookup]:
    """Two features per token: the old rows [V_old, d] of its first and of its last piece (none without pieces).

    >>> d = Decomposition(torch.tensor([[1, 2], [0, 0]]), torch.tensor([[True, True], [False, False]]))
    >>> [lookup.index.tolist() for lookup in piece_lookups(d, torch.zeros(3, 2))]
    [[1, -1], [2, -1]]
    """
    count = pieces.mask.sum(dim=1)
    first = pieces.pieces[:, 0]
    last = pieces.pieces.gather(1, (count - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    missing = count == 0
    return [Lookup(old, torch.where(missing, -1, first)), Lookup(old, torch.where(missing, -1, last))]


def untie_output(model: Any) -> bool:
    """Give a tied model's head its own copy of the matrix; False if it was untied already (or has no head)."""
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings().weight
    if head is None or head.weight.data_ptr() != embedding.data_ptr():
        return False
    head.weight = torch.nn.Parameter(embedding.detach().clone(), requires_grad=embedding.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda: None)()
    if text_config is not None:
        text_config.tie_word_embeddings = False
    return True


def _read_transplant_report(path: Path) -> dict[str, Any] | None:
    report = path / REPORT_NAME
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(
            f"{report} cannot be read ({error}).", "Restore it from the transplant's output, or delete it."
        ) from error
    return data if isinstance(data, dict) else None


def _teacher_from_report(report: dict[str, Any] | None) -> str:
    """The original model of a transplant: its built-in name, else the folder it was read from."""
    model = (report or {}).get("model", {})
    if model.get("builtin"):
        return str(model.get("name", ""))
    path = model.get("path")
    return str(path) if path and Path(path).exists() else ""


def _transplant_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "model": report.get("model", {}).get("name"),
        "tokenizer": report.get("tokenizer", {}).get("name"),
        "method": report.get("method"),
        "counts": report.get("counts"),
        "command": report.get("command"),
    }


_FIT_WORDS = {"affine": "through one affine map of their estimates", "rows": "each row on its own"}


def model_card(result: HealResult) -> str:
    """README.md for a healed directory: the whole history, transplant then heal."""
    history = []
    if result.transplant:
        t = result.transplant
        history.append(
            f"1. Transplanted zero-shot from {t['model']} onto the {t['tokenizer']} tokenizer with method "
            f"`{t['method']}`" + (f":\n   `{t['command']}`" if t.get("command") else ".")
        )
    recovered = result.gap_recovered
    history.append(
        f"{len(history) + 1}. Healed by tokenadapt {result.versions['tokenadapt']}: objective `{result.objective}`, "
        f"{result.rows['trained']} embedding rows trained ({result.rows['kind']}, "
        f"{_FIT_WORDS.get(result.rows.get('fit', 'rows'), 'fit rows')}"
        + (", plus a correction of each row its token's batches trained" if result.rows.get("residuals") else "")
        + (
            f"; the map writes the estimated rows only, the other {result.rows['corrections_only']} rows train by "
            "their corrections alone"
            if result.rows.get("corrections_only")
            else ""
        )
        + ("; the output matrix untied from the input matrix" if result.rows.get("untied") else "")
        + "), body frozen, "
        f"{result.steps} steps on "
        + ", ".join(t["name"] for t in result.texts)
        + "."
        + (f" Held-out gap to the original closed by {recovered:.0%}." if recovered is not None else "")
    )
    command = f"\n\n```\n{result.command}\n```" if result.command else ""
    return (
        "---\nlibrary_name: transformers\ntags:\n- tokenadapt\n- tokenizer-transplant\n- healed\n---\n\n"
        f"# {Path(result.out_dir).name}\n\n" + "\n".join(history) + command + "\n\n"
        "heal_report.json holds the held-out bits per byte before, during and after healing; "
        "transplant_report.json (when present) the transplant's figures.\n"
    )
