"""The transplant pipeline: resolve inputs -> align vocabularies -> estimate embeddings -> write a verified directory.

    >>> result = transplant("smollm2-135m", "llama3", "out/smollm2-llama3")
    >>> result.counts["estimated"], result.out_dir
    (90211, PosixPath('out/smollm2-llama3'))

Tokens both vocabularies share keep their rows; special tokens inherit by role; the rest come from the chosen method
(hybrid by default). The output is a plain Hugging Face directory plus `transplant_report.json` and a model card.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenadapt.checkpoint import (
    EmbeddingMatrices,
    assert_verified,
    install_embeddings,
    load_causal_lm,
    read_embeddings,
)
from tokenadapt.embedder import AuxEmbedder, embed_vocabulary
from tokenadapt.errors import InputError
from tokenadapt.file_level import CheckpointPlan, Unsupported, plan_checkpoint, verify_directory, write_checkpoint
from tokenadapt.method_inputs import Context, extra_inputs
from tokenadapt.methods import get_method, required_needs
from tokenadapt.methods.base import MethodInputs, MethodSpec
from tokenadapt.methods.combine import candidate_mean
from tokenadapt.methods.local import dropped_whitespace_tail
from tokenadapt.methods.numbers import apply_numbers
from tokenadapt.neighbors import Neighbors, top_k_neighbors
from tokenadapt.options import TransplantOptions
from tokenadapt.output import check_output_path, staged_output
from tokenadapt.prior import PriorPlan, hidden_statistics, plan_prior, sample_hidden_states, token_features
from tokenadapt.report import Timings, markdown_table, peak_rss_mb, time_and_memory_line, versions, write_json
from tokenadapt.safetensors_io import SafetensorsHeader, TensorSpec, read_tensor
from tokenadapt.tokenizer_io import load_tokenizer, resolve_tokenizer, save_tokenizer
from tokenadapt.vocab import (
    Alignment,
    Assignment,
    MatchMode,
    Vocabulary,
    align_vocabularies,
    build_vocabulary,
)
from tokenadapt.vocab.decompose import decompose
from tokenadapt.vocab.forms import FORM_FEATURES, FORM_WEIGHTS, token_forms
from tokenadapt.zoo import resolve_embedder, resolve_model
from tokenadapt.zoo.cache import cache_path, read_checked_array, sha256_tree, write_checked_array
from tokenadapt.zoo.models import ResolvedModel

log = logging.getLogger("tokenadapt")
REPORT_NAME = "transplant_report.json"
HASH_AUTO_MAX_BYTES = 4 * 2**30  # `--hash-inputs auto` hashes a model folder up to this size
# `--prior auto` on the file-level path loads the model only up to this many bytes of weights: the path exists so
# that big checkpoints need memory for their embeddings alone
PRIOR_AUTO_MAX_BYTES = 4 << 30


@dataclass
class TransplantResult:
    """What a transplant did, with every figure needed to judge or reproduce it (saved as transplant_report.json)."""

    out_dir: str
    method: str
    options: dict[str, Any]
    model: dict[str, Any]
    tokenizer: dict[str, Any]
    counts: dict[str, int]
    method_paths: dict[str, dict[str, int]]
    specials: list[dict[str, Any]]
    chat_template: dict[str, Any]
    timings: dict[str, float]
    peak_rss_mb: float
    versions: dict[str, str]
    verification: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    command: str | None = None
    prior: dict[str, Any] | None = None
    whitespace_tail_rows: int | None = None  # None: --whitespace-tail keep (or a method without local estimates)
    neighbor_form: dict[str, Any] | None = None  # None: a method without global neighbours
    auxiliary: dict[str, Any] | None = None  # None: a method without auxiliary embeddings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        rows = [[kind, count] for kind, count in self.counts.items() if count]
        lines = [
            f"## Transplant: {self.model['name']} -> {self.tokenizer['name']} ({self.method})",
            "",
            f"Output: `{self.out_dir}`; vocabulary {self.model['old_vocab_size']} -> {self.tokenizer['size']} "
            f"({self.tokenizer['family']}); rows {self.model['rows']}; tied: {self.model['tied']}.",
            "",
            markdown_table(["assignment", "tokens"], rows),
            "",
        ]
        for matrix, paths in self.method_paths.items():
            lines.append(f"{matrix} rows by path: " + ", ".join(f"{k} {v}" for k, v in paths.items() if v))
        lines.append(f"Chat template: {self.chat_template['status']}" + _missing_note(self.chat_template))
        lines.append(f"Prior calibration: {prior_summary(self.prior)}.")
        lines.append(f"Whitespace tails: {whitespace_tail_summary(self.whitespace_tail_rows)}.")
        if self.neighbor_form is not None:
            lines.append(f"Neighbour form: {neighbor_form_summary(self.neighbor_form)}.")
        if self.auxiliary is not None:
            lines.append(f"Auxiliary embeddings ({self.auxiliary['embedder']}): {auxiliary_summary(self.auxiliary)}.")
        files = self.model.get("files")
        lines.append(
            f"Checkpoint: {self.model.get('io_note', self.model.get('io'))}"
            + (" (weight files: " + ", ".join(f"{k} {v}" for k, v in files.items()) + ")" if files else "")
            + (f"; verification: {self.verification['kind']}" if self.verification else "; not verified")
            + "."
        )
        lines.append(time_and_memory_line(self.timings, self.peak_rss_mb))
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _missing_note(chat: dict[str, Any]) -> str:
    return f" (missing in the new vocabulary: {', '.join(chat['missing'])})" if chat.get("missing") else ""


def transplant(
    model: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    options: TransplantOptions | None = None,
    progress: bool = False,
    command: str | None = None,
) -> TransplantResult:
    """Move `model` onto `tokenizer` and write the result to `out`; see the module docstring.

    Safetensors checkpoints of known architectures take the file-level path (only the embedding tensors are read
    and rewritten, every other tensor is linked or copied byte for byte; see `file_level`); anything else is loaded
    whole (in-memory). Both compute the same rows; `result.model["io"]` says which ran and why.
    """
    options = (options or TransplantOptions()).validated()
    spec = get_method(options.method)
    timings = Timings()
    out_path = Path(out)
    with timings.stage("resolve"):
        resolved_model = resolve_model(str(model))
        resolved_tokenizer = resolve_tokenizer(str(tokenizer))
        # every local input is protected from OUT, the embedder directory included
        protected = [resolved_model.path, resolved_tokenizer.path]
        if Path(options.embedder).exists():
            protected.append(Path(options.embedder))
        check_output_path(out_path, protected, options.overwrite)
        plan, io_note = choose_checkpoint_io(resolved_model.path, options.checkpoint_io)
    with timings.stage("hash"):
        model_sha256, model_sha256_of = model_digest(resolved_model, options.hash_inputs)
    with timings.stage("load"):
        old_tokenizer = load_tokenizer(resolved_model.path)
        new_tokenizer = load_tokenizer(resolved_tokenizer)
        lm: Any = None
        matrices: EmbeddingMatrices | None = None
        if plan is None:
            log.info("loading %s", resolved_model.path)
            lm = load_causal_lm(resolved_model.path)
            matrices = read_embeddings(lm)
            old_rows, hidden, tied, architecture = matrices.rows, matrices.hidden_size, matrices.tied, type(lm).__name__
        else:
            old_rows, hidden, tied, architecture = plan.rows, plan.hidden_size, plan.tied, plan.architecture
    with timings.stage("align"):
        old_vocab = build_vocabulary(old_tokenizer)
        new_vocab = build_vocabulary(new_tokenizer)
        alignment = align_vocabularies(old_vocab, new_vocab, old_rows, MatchMode(options.match))
    log.info("aligned %d -> %d tokens: %s", old_vocab.size, new_vocab.size, alignment.counts())
    inputs = _method_inputs(spec, old_vocab, new_vocab, alignment, old_rows, options, timings, progress)
    prior_plan: PriorPlan | None = None
    prior_report: dict[str, Any] | None = None
    if options.prior_active and inputs.count:
        if plan is not None and options.prior == "auto" and plan.total_bytes > PRIOR_AUTO_MAX_BYTES:
            prior_report = {
                "applied": False,
                "reason": (
                    f"it needs the whole model in memory ({plan.total_bytes / 2**30:.1f} GiB of weights) and "
                    f"--prior auto loads at most {PRIOR_AUTO_MAX_BYTES / 2**30:.0f} GiB on the file-level path; "
                    "pass --prior on to calibrate anyway"
                ),
            }
        else:
            with timings.stage("prior"):
                prior_plan = calibrate_prior(
                    lm, resolved_model.path, old_tokenizer, new_vocab, alignment, inputs, spec, options, progress
                )
            prior_report = prior_plan.report
    rows = padded_rows(new_vocab.size, options.pad_to_multiple_of)
    chat = decide_chat_template(old_tokenizer, new_tokenizer, old_vocab, new_vocab)
    ids = special_ids(new_tokenizer)
    warnings = list(inputs.notes) + special_id_warnings(ids) + (list(plan.warnings) if plan is not None else [])
    model_info: dict[str, Any] = {
        "name": resolved_model.name,
        "path": str(resolved_model.path),
        "sha256": model_sha256,
        "sha256_of": model_sha256_of,
        "builtin": resolved_model.builtin,
        "architecture": architecture,
        "io": "in-memory" if plan is None else "file-level",
        "io_note": io_note,
        "tied": tied,
        "hidden_size": hidden,
        "old_vocab_size": old_vocab.size,
        "old_family": old_vocab.family.value,
        "old_rows": old_rows,
        "rows": rows,
    }
    with staged_output(out_path, protected, options.overwrite) as tmp:
        log.info("estimating %d rows with %s", inputs.count, spec.name)
        if plan is None:
            assert matrices is not None
            with timings.stage("estimate"):
                method_paths = _estimate_in_memory(lm, matrices, alignment, inputs, spec, old_vocab, rows, prior_plan)
                configure_special_ids(lm, ids)
            log.info("saving to %s", tmp)
            with timings.stage("save"):
                lm.save_pretrained(str(tmp), safe_serialization=True)
                save_tokenizer(new_tokenizer, tmp)
        else:
            log.info("writing to %s", tmp)
            new_tensors, method_paths = _estimate_file_level(
                plan, alignment, inputs, spec, old_vocab, rows, timings, prior_plan
            )
            with timings.stage("save"):  # the estimate stage runs inside, as the writer reaches each new tensor
                summary = write_checkpoint(plan, tmp, new_tensors, ids, link=options.link_shards)
                save_tokenizer(new_tokenizer, tmp)
            timings["save"] = round(timings["save"] - timings.get("estimate", 0.0), 3)
            method_paths = {role: method_paths[role] for role in ("input", "output") if role in method_paths}
            model_info["files"] = summary.counts()
            model_info["checkpoint_bytes"] = plan.total_bytes
            if summary.counts().get("linked"):
                warnings.append(
                    f"{summary.counts()['linked']} unchanged weight files are hard links to the input's: replace "
                    "them, never edit them in place (or run with --no-link-shards for independent copies)"
                )
        result = TransplantResult(
            out_dir=str(out_path),
            method=spec.name,
            options=options.to_dict(),
            model=model_info,
            tokenizer={
                "name": resolved_tokenizer.name,
                "path": str(resolved_tokenizer.path),
                "format": resolved_tokenizer.format,
                "sha256": resolved_tokenizer.sha256,
                "family": new_vocab.family.value,
                "size": new_vocab.size,
            },
            counts=alignment.counts(),
            method_paths=method_paths,
            specials=[dataclasses.asdict(s) for s in alignment.specials if s.how != "exact"][:64],
            chat_template=chat,
            timings=timings,
            peak_rss_mb=0.0,
            versions=versions(),
            warnings=warnings,
            command=command,
            prior=prior_report,
            whitespace_tail_rows=_whitespace_tail_rows(inputs, spec),
            neighbor_form=_neighbor_form_report(inputs),
            auxiliary=inputs.aux_report,
        )
        if options.verify:
            log.info("verifying the written directory")
            with timings.stage("verify"):
                verification = verify_directory(tmp, int(options.full_verify_max_gb * 1e9), source=plan)
                result.verification = verification.to_dict()
                assert_verified(verification)
        result.peak_rss_mb = round(peak_rss_mb(), 1)
        write_json(tmp / REPORT_NAME, result.to_dict())
        (tmp / "README.md").write_text(model_card(result), encoding="utf-8")
    return result


def choose_checkpoint_io(model_dir: Path, mode: str) -> tuple[CheckpointPlan | None, str]:
    """(plan, note): the file-level plan, or None for the in-memory path, and why.

    `mode` "auto" takes the file-level path whenever `plan_checkpoint` recognises the checkpoint with certainty;
    "file-level" makes anything else an error; "in-memory" never plans.
    """
    if mode == "in-memory":
        return None, "in-memory (--checkpoint-io in-memory)"
    try:
        plan = plan_checkpoint(model_dir)
    except Unsupported as reason:
        if mode == "file-level":
            raise InputError(
                f"The file-level path cannot transplant {model_dir}: {reason}.",
                "Run with --checkpoint-io auto (or in-memory) to load the model whole instead.",
            ) from None
        return None, f"in-memory: {reason}"
    total = sum(len(header.tensors) for header in plan.shards.values())
    return plan, (
        f"file-level: {plan.architecture} safetensors checkpoint, {len(plan.shards)} file(s), {total} tensors, "
        f"{len(plan.changed)} rewritten ({plan.dtype})"
    )


def _estimate_in_memory(
    lm: Any,
    matrices: EmbeddingMatrices,
    alignment: Alignment,
    inputs: MethodInputs,
    spec: MethodSpec,
    old_vocab: Vocabulary,
    rows: int,
    prior: PriorPlan | None = None,
) -> dict[str, dict[str, int]]:
    """Estimate the new matrices of a loaded model and install them; returns the method paths per matrix.

    `prior` shifts the rows of the matrix the head reads: the untied head, or the tied embeddings."""
    tied = matrices.output is None
    new_input, input_paths = assemble_matrix(
        matrices.input, alignment, inputs, spec, old_vocab, rows, prior if tied else None
    )
    method_paths = {"input": input_paths}
    new_output = new_bias = None
    if matrices.output is not None:
        new_output, method_paths["output"] = assemble_matrix(
            matrices.output, alignment, inputs, spec, old_vocab, rows, prior
        )
    if matrices.output_bias is not None:
        new_bias, _ = assemble_matrix(matrices.output_bias[:, None], alignment, inputs, spec, old_vocab, rows)
        new_bias = new_bias[:, 0]
    install_embeddings(lm, new_input, new_output, new_bias)
    return method_paths


def _estimate_file_level(
    plan: CheckpointPlan,
    alignment: Alignment,
    inputs: MethodInputs,
    spec: MethodSpec,
    old_vocab: Vocabulary,
    rows: int,
    timings: Timings,
    prior: PriorPlan | None = None,
) -> tuple[dict[str, TensorSpec], dict[str, dict[str, int]]]:
    """The changed tensors as `TensorSpec`s whose bytes are computed when the shard writer reaches them.

    Each is read in its stored dtype and estimated in float32 column blocks (`assemble_into`) straight into a
    matrix of that dtype, so memory holds one old and one new matrix as stored plus one float32 column block of
    each at a time. The returned method paths fill in as the tensors are computed.
    """
    new_tensors: dict[str, TensorSpec] = {}
    method_paths: dict[str, dict[str, int]] = {}
    head_role = "input" if len(plan.changed) == 1 else "output"  # tied: the embeddings are the head
    for role, name in zip(("input", "output"), plan.changed, strict=False):
        header = plan.shards[plan.file_of(name)]

        def compute(role: str = role, name: str = name, header: SafetensorsHeader = header) -> torch.Tensor:
            with timings.stage("estimate"):
                old = read_tensor(header, name)
                new = torch.empty((rows, plan.hidden_size), dtype=plan.torch_dtype)
                shift = prior if role == head_role else None
                method_paths[role] = assemble_into(new, old, alignment, inputs, spec, old_vocab, shift)
            return new  # the old matrix is freed with this frame, before the writer copies `new` out

        new_tensors[name] = TensorSpec(name, plan.dtype, (rows, plan.hidden_size), compute)
    return new_tensors, method_paths


def model_digest(resolved: ResolvedModel, policy: str) -> tuple[str | None, str]:
    """(sha256, what it is the digest of) of the model a transplant read, for the report.

    A built-in's (or a .gguf's) source file was hashed when it was fetched. A folder is hashed file by file
    (`sha256_tree`, remembered per file), with `--hash-inputs auto` only up to HASH_AUTO_MAX_BYTES: reading a
    large checkpoint whole would cost more than the file-level transplant itself, which links most shards.
    """
    if resolved.sha256:
        return resolved.sha256, "the source file"
    size = sum(f.stat().st_size for f in resolved.path.rglob("*") if f.is_file())
    if policy == "off" or (policy == "auto" and size > HASH_AUTO_MAX_BYTES):
        why = "--hash-inputs off" if policy == "off" else f"{size / 2**30:.1f} GiB of files, over --hash-inputs auto's"
        limit = "" if policy == "off" else f" {HASH_AUTO_MAX_BYTES / 2**30:.0f} GiB"
        return None, f"not computed ({why}{limit}); --hash-inputs on hashes it"
    return sha256_tree(resolved.path), "the folder's files (tokenadapt.zoo.cache.sha256_tree)"


def calibrate_prior(
    lm: Any,
    model_path: Path,
    old_tokenizer: Any,
    new_vocab: Vocabulary,
    alignment: Alignment,
    inputs: MethodInputs,
    spec: MethodSpec,
    options: TransplantOptions,
    progress: bool,
) -> PriorPlan:
    """The prior calibration of the estimated rows (see `tokenadapt.prior`).

    Needs the old model to sample from: the in-memory path's `lm`, or (file-level path, `lm` None) the model
    loaded in its stored dtype for this step alone. The estimates' mean logits come from the method applied to
    the old rows' mean logits [V, 1], which equals the mean logit of the estimated rows for a linear method.
    """
    model = lm if lm is not None else load_causal_lm(model_path)
    start = next((i for i in (old_tokenizer.bos_token_id, old_tokenizer.eos_token_id) if i is not None), 0)
    _, hidden = sample_hidden_states(model, start, seed=options.seed, progress=progress)
    statistics = hidden_statistics(hidden)
    head = model.get_output_embeddings()
    head_rows = (head if head is not None else model.get_input_embeddings()).weight.detach()
    with torch.no_grad():
        old_priors = head_rows.to(torch.float32) @ statistics.mean  # [V]
    del model, head, head_rows
    estimated = apply_numbers(old_priors[:, None], inputs, spec.fn(old_priors[:, None], inputs)).rows[:, 0]
    features = token_features(new_vocab)
    shared = alignment.ids_of(Assignment.EXACT, Assignment.CANONICAL)
    sources = alignment.source[shared]
    # single bytes sit first in a byte-level vocabulary by construction, not by frequency: leave them out
    keep = (features.lengths[torch.from_numpy(shared)] >= 2).numpy() & (sources < old_priors.shape[0])
    shared, sources = shared[keep], sources[keep]
    return plan_prior(
        statistics,
        estimated,
        features.subset(inputs.new_ids),
        old_priors[torch.from_numpy(sources)],
        features.subset(shared),
        options.prior_weight,
        options.prior_fit,
    )


def prior_summary(report: dict[str, Any] | None) -> str:
    """One line on what prior calibration did, for the Markdown summary and the model card."""
    if report is None:
        return "off"
    if not report.get("applied"):
        return f"not applied: {report['reason']}"
    fit = report["fit"]
    if report.get("prior_fit") == "form":
        lines = [name for name, cls in report["classes"].items() if cls["line"] != "rank line"]
        predictor = (
            f"the new tokenizer's frequency order, the token's class and its length predict (a line each for "
            f"{', '.join(lines) or 'no class'}"
        )
    else:
        predictor = "the new tokenizer's frequency order predicts (one line"
    return (
        f"estimated rows' mean logits moved {report['weight']:g} of the way to what {predictor}; fit on "
        f"{report['shared_tokens']} shared tokens, rank r = {fit['r']:.2f}, residual {report['residual_std']:.2f}; "
        f"mean shift {report['mean_shift']:+.2f})"
    )


def whitespace_tail_summary(rows: int | None) -> str:
    """One line on `--whitespace-tail`, for the Markdown summary and the model card."""
    if rows is None:
        return "not dropped"
    return f"{rows} tokens ending in whitespace took their local estimate from the pieces before it"


def neighbor_form_summary(report: dict[str, Any]) -> str:
    """One line on `--neighbor-form`, for the Markdown summary and the model card."""
    how = f"matched (+{report['bonus']:g} per shared form)" if report["bonus"] else "ignored (the paper's search)"
    return (
        f"{how}; {report['same_word_start']:.0%} of the global neighbours share their token's word start, "
        f"{report['same_case']:.0%} its case"
    )


def auxiliary_summary(report: dict[str, Any]) -> str:
    """What the embedding and the neighbour search computed, and what they found cached: the cold-or-warm story
    behind the embed and neighbors times."""
    old, new = report["old"], report["new"]
    parts = [
        "old vocabulary " + ("cached" if old["cached"] else f"{old['inputs_encoded']:,} inputs encoded"),
        f"{new['tokens']:,} new tokens "
        + (
            "cached"
            if new["cached"]
            else f"{new['inputs_encoded']:,} inputs encoded, {new['rows_lent_by_old']:,} "
            "rows lent by the old vocabulary"
        ),
    ]
    if "neighbors" in report:
        parts.append(
            f"top-{report['neighbors']['k']} neighbours " + ("cached" if report["neighbors"]["cached"] else "searched")
        )
    return "; ".join(parts)


def _neighbor_form_report(inputs: MethodInputs) -> dict[str, Any] | None:
    """How often the global neighbours share their new token's word start and case; None without neighbours."""
    if inputs.neighbors is None or inputs.forms is None:
        return None
    wanted, offered = inputs.forms
    found = torch.isfinite(inputs.neighbors.similarities)
    got = offered[inputs.neighbors.indices]  # [U, k, 4]
    start = (wanted[:, None, :2] * got[..., :2]).sum(dim=2)
    cased = wanted[:, None, 2:].sum(dim=2) > 0
    case = (wanted[:, None, 2:] * got[..., 2:]).sum(dim=2)
    return {
        "bonus": inputs.options.neighbor_form_bonus_active,
        "same_word_start": round(float(start[found].mean()) if found.any() else 0.0, 4),
        "same_case": round(float(case[found & cased].mean()) if (found & cased).any() else 0.0, 4),
    }


def _whitespace_tail_rows(inputs: MethodInputs, spec: MethodSpec) -> int | None:
    """How many rows' local estimates left out a whitespace tail; None where no local estimate drops one."""
    uses_local = {"decomposition", "aux"} <= required_needs(spec, inputs.options.fallback)
    dropped = dropped_whitespace_tail(inputs) if uses_local else None
    return None if dropped is None else int(dropped.any(dim=1).sum())


def padded_rows(size: int, multiple: int) -> int:
    """Rows for `size` ids rounded up to a multiple (padding rows are never emitted by the tokenizer)."""
    return -(-size // multiple) * multiple


def _method_inputs(
    spec: MethodSpec,
    old_vocab: Vocabulary,
    new_vocab: Vocabulary,
    alignment: Alignment,
    old_rows: int,
    options: TransplantOptions,
    timings: Timings,
    progress: bool,
) -> MethodInputs:
    new_ids = alignment.estimated_ids
    old_candidates = torch.zeros(old_rows, dtype=torch.bool)
    real = [i for i in range(min(old_vocab.size, old_rows)) if old_vocab.canonical[i]]
    old_candidates[real] = True
    old_lengths = torch.zeros(old_rows, dtype=torch.float32)
    old_lengths[real] = torch.from_numpy(old_vocab.byte_lengths[real]).float()
    old_whitespace = torch.zeros(old_rows, dtype=torch.bool)
    old_whitespace[real] = torch.tensor([not (old_vocab.canonical[i] or b"x").strip() for i in real], dtype=torch.bool)
    new_lengths = torch.from_numpy(new_vocab.byte_lengths[new_ids]).float()
    fields: dict[str, Any] = {}
    needs = required_needs(spec, options.fallback)  # a method that falls back also needs its fallback's inputs
    if "decomposition" in needs:
        with timings.stage("decompose"):
            fields["decomposition"] = decompose(old_vocab, new_vocab, new_ids, old_rows, progress)
    if "aux" in needs:
        with timings.stage("embed"):
            embedder = AuxEmbedder.load(
                resolve_embedder(options.embedder), name=options.embedder, batch_size=options.embed_batch_size
            )
            old_aux = embed_vocabulary(embedder, old_vocab, progress=progress)
            # the estimated tokens only: copied rows need no neighbours, and inputs the old side has are lent
            new_aux = embed_vocabulary(embedder, new_vocab, progress=progress, token_ids=new_ids, donor=old_aux)
            fields["aux_report"] = {
                "embedder": options.embedder,
                "embedder_sha256": embedder.sha256,
                "old": {"cached": old_aux.from_cache, "inputs_encoded": old_aux.encoded},
                "new": {
                    "tokens": int(new_ids.shape[0]),
                    "cached": new_aux.from_cache,
                    "inputs_encoded": new_aux.encoded,
                    "rows_lent_by_old": new_aux.lent,
                },
            }
        aux_old = torch.zeros((old_rows, old_aux.vectors.shape[1]))
        aux_old_ok = torch.zeros(old_rows, dtype=torch.bool)
        usable = min(old_rows, old_vocab.size)
        aux_old[:usable], aux_old_ok[:usable] = old_aux.vectors[:usable], old_aux.ok[:usable]
        fields.update(
            aux_new=new_aux.vectors,
            aux_new_ok=new_aux.ok,
            aux_old=aux_old,
            aux_old_ok=aux_old_ok,
        )
        if "neighbors" in needs:
            with timings.stage("neighbors"):
                bonus = options.neighbor_form_bonus_active
                form_key = f"|forms {bonus!r} {FORM_WEIGHTS.tolist()}" if bonus else ""
                cache_key = f"{old_aux.key}|{new_aux.key}|{options.top_k}{form_key}"
                wanted, offered = fields["forms"] = _neighbor_forms(old_vocab, new_vocab, new_ids, old_rows)
                fields["neighbors"] = found = cached_neighbors(
                    fields["aux_new"],
                    aux_old,
                    old_candidates & aux_old_ok,
                    options.top_k,
                    cache_key,
                    new_ids,
                    progress,
                    (wanted, offered * FORM_WEIGHTS) if bonus else None,
                    bonus,
                )
                fields["aux_report"]["neighbors"] = {"cached": found.from_cache, "k": options.top_k}
    context = Context(old_vocab, new_vocab, alignment, new_ids, old_candidates, options, timings, progress)
    fields.update(extra_inputs(needs, context))  # text, FOCUS, donor and number-token inputs, with report notes
    return MethodInputs(
        new_ids=new_ids,
        old_candidates=old_candidates,
        new_byte_lengths=new_lengths,
        old_byte_lengths=old_lengths,
        old_whitespace=old_whitespace,
        options=options,
        **fields,
    )


def _neighbor_forms(
    old_vocab: Vocabulary, new_vocab: Vocabulary, new_ids: np.ndarray, old_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query forms [U, 4] of the estimated tokens, key forms [old_rows, 4]) for the neighbour search."""
    key_forms = torch.zeros((old_rows, FORM_FEATURES), dtype=torch.float32)
    usable = min(old_rows, old_vocab.size)
    key_forms[:usable] = token_forms(old_vocab.canonical[:usable])
    return token_forms([new_vocab.canonical[i] for i in new_ids.tolist()]), key_forms


def cached_neighbors(
    queries: torch.Tensor,
    keys: torch.Tensor,
    eligible: torch.Tensor,
    k: int,
    cache_key: str,
    query_ids: np.ndarray,
    progress: bool = False,
    forms: tuple[torch.Tensor, torch.Tensor] | None = None,
    form_bonus: float = 0.0,
) -> Neighbors:
    """`top_k_neighbors`, cached on disk: a re-run with the same vocabularies, embedder and k skips the search.

    `forms` (query [U, f], key [V, f]) and `form_bonus` rank neighbours of the query's own form first; the
    cache key must then name the bonus and the form weights."""
    digest = hashlib.sha256(cache_key.encode() + query_ids.tobytes() + eligible.numpy().tobytes()).hexdigest()[:32]
    ids_path, sims_path = (cache_path("neighbors", f"{digest}-{part}.npy") for part in ("ids", "sims"))
    ids, sims = read_checked_array(ids_path), read_checked_array(sims_path)
    if ids is not None and sims is not None and ids.shape == sims.shape == (queries.shape[0], k):
        return Neighbors(indices=torch.from_numpy(ids), similarities=torch.from_numpy(sims), from_cache=True)
    wanted, offered = forms if forms is not None else (None, None)
    found = top_k_neighbors(
        queries, keys, eligible, k, progress=progress, query_forms=wanted, key_forms=offered, form_bonus=form_bonus
    )
    write_checked_array(ids_path, found.indices.numpy())
    write_checked_array(sims_path, found.similarities.numpy())
    return found


COLUMN_BLOCK_BYTES = 256 << 20  # float32 bytes of old rows estimated at once


def column_block(old_rows: int, width: int, spec: MethodSpec) -> int:
    """Columns estimated at once: about COLUMN_BLOCK_BYTES of float32 old rows, a multiple of 64.

    Methods whose columns interact (`random`'s covariance) take the whole width. The block depends on the shapes
    only, so the in-memory and file-level paths compute the same blocks and the same bytes.

    >>> column_block(128256, 4096, get_method("hybrid")), column_block(49152, 576, get_method("hybrid"))
    (512, 576)
    """
    if not spec.column_separable:
        return width
    block = COLUMN_BLOCK_BYTES // (4 * max(old_rows, 1)) // 64 * 64
    return max(1, min(width, max(64, block)))


def assemble_into(
    new: torch.Tensor,
    old: torch.Tensor,
    alignment: Alignment,
    inputs: MethodInputs,
    spec: MethodSpec,
    old_vocab: Vocabulary,
    prior: PriorPlan | None = None,
) -> dict[str, int]:
    """Fill `new` [rows, d] from `old` [V_old, d] (each in any float dtype); returns the method paths.

    Copied rows are copied whole in `new`'s dtype (exact: a float32 round trip would give the same bits). Every
    other row (estimates, role-less specials, holes, padding) is computed in float32 column blocks of
    `column_block` columns (`assemble_block`) and cast to `new`'s dtype, so memory needs one block, not a float32
    copy of either matrix.
    """
    copied = alignment.copied_ids
    copy_rows(new, old, copied, alignment.source[copied])
    not_copied = np.ones(new.shape[0], dtype=bool)
    not_copied[copied] = False
    rest = np.flatnonzero(not_copied)
    if not rest.size:
        return {}
    width = int(new.shape[1])
    step = column_block(int(old.shape[0]), width, spec)
    rest_index = torch.from_numpy(rest)
    paths: dict[str, int] = {}
    for start in range(0, width, step):
        stop = min(width, start + step)
        shift = prior.block(start, stop) if prior is not None else None
        block, paths = assemble_block(
            old[:, start:stop].to(torch.float32).contiguous(), rest, alignment, inputs, spec, old_vocab, shift
        )
        new[:, start:stop].index_copy_(0, rest_index, block.to(new.dtype))
        del block
    return paths


def copy_rows(new: torch.Tensor, old: torch.Tensor, targets: np.ndarray, sources: np.ndarray) -> None:
    """new[targets] = old[sources] (exact, in `new`'s dtype).

    `index_select` + `index_copy_` rather than `new[targets] = old[sources]`: the same bytes, five times faster
    for 110k rows of 4096 (the advanced-indexing path builds and scatters through slower kernels).
    """
    if targets.size:
        rows = old.index_select(0, torch.from_numpy(sources)).to(new.dtype)
        new.index_copy_(0, torch.from_numpy(targets), rows)


def assemble_matrix(
    old: torch.Tensor,
    alignment: Alignment,
    inputs: MethodInputs,
    spec: MethodSpec,
    old_vocab: Vocabulary,
    rows: int,
    prior: PriorPlan | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """The full new matrix [rows, d] (float32) for one old matrix [V_old, d]."""
    new = torch.empty((rows, old.shape[1]), dtype=torch.float32)
    return new, assemble_into(new, old, alignment, inputs, spec, old_vocab, prior)


def assemble_block(
    old: torch.Tensor,
    rest: np.ndarray,
    alignment: Alignment,
    inputs: MethodInputs,
    spec: MethodSpec,
    old_vocab: Vocabulary,
    prior_shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Rows `rest` (ascending new ids that copy no old row) [len(rest), c] from old columns [V_old, c] (float32):
    role-less specials, estimates (plus `prior_shift` [U, c] where given), and the mean of the old rows for holes
    and padding."""
    mean = candidate_mean(old, inputs.old_candidates)
    new = mean.expand(len(rest), -1).clone()  # holes and padding rows: never emitted, so the neutral mean is safest
    unmatched = alignment.ids_of(Assignment.SPECIAL_UNMATCHED)
    if unmatched.size:
        old_specials = [i for i in sorted(old_vocab.special_ids) if i < old.shape[0]]
        new[torch.from_numpy(np.searchsorted(rest, unmatched))] = (
            old[old_specials].mean(dim=0) if old_specials else mean
        )
    paths: dict[str, int] = {}
    if inputs.count:
        estimate = apply_numbers(old, inputs, spec.fn(old, inputs))
        rows = estimate.rows if prior_shift is None else estimate.rows + prior_shift
        new[torch.from_numpy(np.searchsorted(rest, inputs.new_ids))] = rows
        paths = estimate.paths
    return new, paths


_TEMPLATE_TOKEN = re.compile(r"<[^<>\s]{1,40}>|\[[A-Z_/]{2,30}\]")


def decide_chat_template(
    old_tokenizer: Any, new_tokenizer: Any, old_vocab: Vocabulary, new_vocab: Vocabulary
) -> dict[str, Any]:
    """Carry the old chat template only if every special token it names exists in the new vocabulary.

    Returns {"status": "carried" | "kept-new" | "dropped" | "none", "missing": [...]}; mutates `new_tokenizer`.
    """
    template = getattr(old_tokenizer, "chat_template", None)
    if not template:
        return {
            "status": "kept-new" if getattr(new_tokenizer, "chat_template", None) else "none",
            "missing": [],
        }
    text = template if isinstance(template, str) else "\n".join(str(v) for v in dict(template).values())
    old_specials = {old_vocab.tokens[i] for i in old_vocab.special_ids if old_vocab.tokens[i]}
    named = {s for s in old_specials if s and s in text} | {
        m for m in _TEMPLATE_TOKEN.findall(text) if m in old_vocab.id_by_string
    }
    missing = sorted(s for s in named if s not in new_vocab.id_by_string)
    if not missing:
        new_tokenizer.chat_template = template
        return {"status": "carried", "missing": []}
    return {
        "status": "kept-new" if getattr(new_tokenizer, "chat_template", None) else "dropped",
        "missing": missing,
    }


def special_ids(new_tokenizer: Any) -> dict[str, Any]:
    """The new tokenizer's bos/eos/pad ids (None where it declares none)."""
    return {role: getattr(new_tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "pad")}


def special_id_warnings(ids: dict[str, Any]) -> list[str]:
    if ids["eos"] is None:
        return ["the new tokenizer declares no eos token: generation will not stop by itself"]
    return []


def configure_special_ids(lm: Any, ids: dict[str, Any]) -> None:
    """Point a loaded model's config and generation config at the new tokenizer's bos/eos/pad ids."""
    for role, value in ids.items():
        setattr(lm.config, f"{role}_token_id", value)
        if getattr(lm, "generation_config", None) is not None:
            setattr(lm.generation_config, f"{role}_token_id", value)


def model_card(result: TransplantResult) -> str:
    """README.md for the output directory: YAML front matter, the command, the counts."""
    base = result.model["name"]
    counts = markdown_table(["assignment", "tokens"], [[k, v] for k, v in result.counts.items() if v])
    command = result.command or f"tokenadapt transplant {base} {result.tokenizer['name']} OUT --method {result.method}"
    return (
        "---\n"
        f"base_model: {base}\n"
        "library_name: transformers\n"
        "tags:\n- tokenadapt\n- tokenizer-transplant\n"
        "---\n\n"
        f"# {base} on the {result.tokenizer['name']} tokenizer\n\n"
        f"Made zero-shot (no training) by tokenadapt {result.versions['tokenadapt']} with method `{result.method}`:\n\n"
        f"```\n{command}\n```\n\n"
        f"Vocabulary {result.model['old_vocab_size']} -> {result.tokenizer['size']}. Where each row came from:\n\n"
        f"{counts}\n\n"
        f"Chat template: {result.chat_template['status']}{_missing_note(result.chat_template)}.\n\n"
        f"Prior calibration: {prior_summary(result.prior)}.\n\n"
        f"Whitespace tails: {whitespace_tail_summary(result.whitespace_tail_rows)}.\n\n"
        + (f"Neighbour form: {neighbor_form_summary(result.neighbor_form)}.\n\n" if result.neighbor_form else "")
        + "Zero-shot transplants lose some quality; see transplant_report.json for every figure and "
        "`tokenadapt eval` to measure it on your text.\n"
    )


class _CallableModule(types.ModuleType):
    """This module, callable as its main function.

    The package exports the function `transplant` under the same name as this module, and importing the module
    (`from tokenadapt.transplant import TransplantResult`) rebinds `tokenadapt.transplant` to the module: without
    this, `tokenadapt.transplant(...)` would then raise "'module' object is not callable".
    """

    def __call__(self, *args: Any, **kwargs: Any) -> TransplantResult:
        return transplant(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
