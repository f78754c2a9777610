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
    verify_model_dir,
)
from tokenadapt.embedder import AuxEmbedder, embed_vocabulary
from tokenadapt.methods import get_method
from tokenadapt.methods.base import MethodInputs, MethodSpec
from tokenadapt.methods.combine import candidate_mean
from tokenadapt.neighbors import Neighbors, top_k_neighbors
from tokenadapt.options import TransplantOptions
from tokenadapt.output import check_output_path, staged_output
from tokenadapt.report import Timings, markdown_table, peak_rss_mb, versions, write_json
from tokenadapt.tokenizer_io import load_tokenizer, resolve_tokenizer
from tokenadapt.vocab import (
    Alignment,
    Assignment,
    MatchMode,
    Vocabulary,
    align_vocabularies,
    build_vocabulary,
)
from tokenadapt.vocab.decompose import decompose
from tokenadapt.zoo import resolve_embedder, resolve_model
from tokenadapt.zoo.cache import cache_path, read_checked_array, write_checked_array

log = logging.getLogger("tokenadapt")
REPORT_NAME = "transplant_report.json"


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
        lines.append(
            f"Time {sum(self.timings.values()):.1f} s ("
            + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items())
            + f"); peak RSS {self.peak_rss_mb:.0f} MiB."
        )
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
    """Move `model` onto `tokenizer` and write the result to `out`; see the module docstring."""
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
    with timings.stage("load"):
        log.info("loading %s", resolved_model.path)
        lm = load_causal_lm(resolved_model.path)
        old_tokenizer = load_tokenizer(resolved_model.path)
        new_tokenizer = load_tokenizer(str(tokenizer))
        matrices = read_embeddings(lm)
    with timings.stage("align"):
        old_vocab = build_vocabulary(old_tokenizer)
        new_vocab = build_vocabulary(new_tokenizer)
        alignment = align_vocabularies(old_vocab, new_vocab, matrices.rows, MatchMode(options.match))
    log.info("aligned %d -> %d tokens: %s", old_vocab.size, new_vocab.size, alignment.counts())
    inputs = _method_inputs(spec, old_vocab, new_vocab, alignment, matrices, options, timings, progress)
    log.info("estimating %d rows with %s", inputs.count, spec.name)
    with timings.stage("estimate"):
        rows = padded_rows(new_vocab.size, options.pad_to_multiple_of)
        new_input, input_paths = assemble_matrix(matrices.input, alignment, inputs, spec, old_vocab, rows)
        method_paths = {"input": input_paths}
        new_output = new_bias = None
        if matrices.output is not None:
            new_output, method_paths["output"] = assemble_matrix(
                matrices.output, alignment, inputs, spec, old_vocab, rows
            )
        if matrices.output_bias is not None:
            new_bias, _ = assemble_matrix(matrices.output_bias[:, None], alignment, inputs, spec, old_vocab, rows)
            new_bias = new_bias[:, 0]
        install_embeddings(lm, new_input, new_output, new_bias)
        chat = decide_chat_template(old_tokenizer, new_tokenizer, old_vocab, new_vocab)
        warnings = _configure_special_ids(lm, new_tokenizer)

    result = TransplantResult(
        out_dir=str(out_path),
        method=spec.name,
        options=options.to_dict(),
        model={
            "name": resolved_model.name,
            "path": str(resolved_model.path),
            "sha256": resolved_model.sha256,
            "builtin": resolved_model.builtin,
            "architecture": type(lm).__name__,
            "tied": matrices.tied,
            "hidden_size": matrices.hidden_size,
            "old_vocab_size": old_vocab.size,
            "old_family": old_vocab.family.value,
            "old_rows": matrices.rows,
            "rows": rows,
        },
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
    )
    with staged_output(out_path, protected, options.overwrite) as tmp:
        log.info("saving to %s", tmp)
        with timings.stage("save"):
            lm.save_pretrained(str(tmp), safe_serialization=True)
            new_tokenizer.save_pretrained(str(tmp))
        if options.verify:
            log.info("verifying the saved directory")
            with timings.stage("verify"):
                verification = verify_model_dir(tmp)
                result.verification = verification.to_dict()
                assert_verified(verification)
        result.peak_rss_mb = round(peak_rss_mb(), 1)
        write_json(tmp / REPORT_NAME, result.to_dict())
        (tmp / "README.md").write_text(model_card(result), encoding="utf-8")
    return result


def padded_rows(size: int, multiple: int) -> int:
    """Rows for `size` ids rounded up to a multiple (padding rows are never emitted by the tokenizer)."""
    return -(-size // multiple) * multiple


def _method_inputs(
    spec: MethodSpec,
    old_vocab: Vocabulary,
    new_vocab: Vocabulary,
    alignment: Alignment,
    matrices: EmbeddingMatrices,
    options: TransplantOptions,
    timings: Timings,
    progress: bool,
) -> MethodInputs:
    new_ids = alignment.estimated_ids
    old_candidates = torch.zeros(matrices.rows, dtype=torch.bool)
    real = [i for i in range(min(old_vocab.size, matrices.rows)) if old_vocab.canonical[i]]
    old_candidates[real] = True
    old_lengths = torch.zeros(matrices.rows, dtype=torch.float32)
    old_lengths[real] = torch.tensor([float(len(old_vocab.canonical[i] or b"")) for i in real])
    new_lengths = torch.tensor([float(len(new_vocab.canonical[i] or b"")) for i in new_ids.tolist()])
    fields: dict[str, Any] = {}
    if "decomposition" in spec.needs:
        with timings.stage("decompose"):
            fields["decomposition"] = decompose(old_vocab, new_vocab, new_ids, matrices.rows, progress)
    if "aux" in spec.needs:
        with timings.stage("embed"):
            embedder = AuxEmbedder.load(
                resolve_embedder(options.embedder), name=options.embedder, batch_size=options.embed_batch_size
            )
            old_aux = embed_vocabulary(embedder, old_vocab, progress=progress)
            new_aux = embed_vocabulary(embedder, new_vocab, progress=progress)
        index = torch.from_numpy(new_ids)
        aux_old = torch.zeros((matrices.rows, old_aux.vectors.shape[1]))
        aux_old_ok = torch.zeros(matrices.rows, dtype=torch.bool)
        usable = min(matrices.rows, old_vocab.size)
        aux_old[:usable], aux_old_ok[:usable] = old_aux.vectors[:usable], old_aux.ok[:usable]
        fields.update(
            aux_new=new_aux.vectors[index],
            aux_new_ok=new_aux.ok[index],
            aux_old=aux_old,
            aux_old_ok=aux_old_ok,
        )
        if "neighbors" in spec.needs:
            with timings.stage("neighbors"):
                cache_key = f"{old_aux.key}|{new_aux.key}|{options.top_k}"
                fields["neighbors"] = cached_neighbors(
                    fields["aux_new"], aux_old, old_candidates & aux_old_ok, options.top_k, cache_key, new_ids, progress
                )
    return MethodInputs(
        new_ids=new_ids,
        old_candidates=old_candidates,
        new_byte_lengths=new_lengths,
        old_byte_lengths=old_lengths,
        options=options,
        **fields,
    )


def cached_neighbors(
    queries: torch.Tensor,
    keys: torch.Tensor,
    eligible: torch.Tensor,
    k: int,
    cache_key: str,
    query_ids: np.ndarray,
    progress: bool = False,
) -> Neighbors:
    """`top_k_neighbors`, cached on disk: a re-run with the same vocabularies, embedder and k skips the search."""
    digest = hashlib.sha256(cache_key.encode() + query_ids.tobytes() + eligible.numpy().tobytes()).hexdigest()[:32]
    ids_path, sims_path = (cache_path("neighbors", f"{digest}-{part}.npy") for part in ("ids", "sims"))
    ids, sims = read_checked_array(ids_path), read_checked_array(sims_path)
    if ids is not None and sims is not None and ids.shape == sims.shape == (queries.shape[0], k):
        return Neighbors(indices=torch.from_numpy(ids), similarities=torch.from_numpy(sims))
    found = top_k_neighbors(queries, keys, eligible, k, progress=progress)
    write_checked_array(ids_path, found.indices.numpy())
    write_checked_array(sims_path, found.similarities.numpy())
    return found


def assemble_matrix(
    old: torch.Tensor,
    alignment: Alignment,
    inputs: MethodInputs,
    spec: MethodSpec,
    old_vocab: Vocabulary,
    rows: int,
) -> tuple[torch.Tensor, dict[str, int]]:
    """The full new matrix [rows, d] for one old matrix [V_old, d]: copies, role matches, estimates, fallbacks."""
    new = torch.empty((rows, old.shape[1]), dtype=torch.float32)
    mean = candidate_mean(old, inputs.old_candidates)
    new[:] = mean  # holes and padding rows: never emitted, so the neutral mean is the safest value
    copied = torch.from_numpy(alignment.copied_ids)
    new[copied] = old[torch.from_numpy(alignment.source[alignment.copied_ids])].to(torch.float32)
    unmatched = alignment.ids_of(Assignment.SPECIAL_UNMATCHED)
    if unmatched.size:
        old_specials = [i for i in sorted(old_vocab.special_ids) if i < old.shape[0]]
        new[torch.from_numpy(unmatched)] = old[old_specials].mean(dim=0) if old_specials else mean
    paths: dict[str, int] = {}
    if inputs.count:
        estimate = spec.fn(old, inputs)
        new[torch.from_numpy(inputs.new_ids)] = estimate.rows
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


def _configure_special_ids(lm: Any, new_tokenizer: Any) -> list[str]:
    """Point config and generation config at the new tokenizer's bos/eos/pad ids; returns warnings."""
    warnings: list[str] = []
    ids = {role: getattr(new_tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "pad")}
    for role, value in ids.items():
        setattr(lm.config, f"{role}_token_id", value)
        if getattr(lm, "generation_config", None) is not None:
            setattr(lm.generation_config, f"{role}_token_id", value)
    if ids["eos"] is None:
        warnings.append("the new tokenizer declares no eos token: generation will not stop by itself")
    return warnings


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
        "Zero-shot transplants lose some quality; see transplant_report.json for every figure and "
        "`tokenadapt eval` to measure it on your text.\n"
    )
