"""What the text-, donor- and number-based methods need, computed once per transplant (the I/O lives here, so the
methods in `methods/` stay pure functions on tensors).

- "text" (`align`): the `--text` documents tokenized with both tokenizers and the byte-overlap count matrix; with
  `--parallel-text`, the two texts' lines tokenized one with each tokenizer and the IBM Model 1 count matrix.
- "focus" (`focus`): fastText vectors trained on the text tokenized with the new tokenizer, then FOCUS weights.
- "donor" (`omp`, `omp-hybrid`): the donor model's embeddings of the new and the shared tokens, then OMP codes.
- `--numbers auto`: the number-token plan, for any method.

    >>> fields = extra_inputs(frozenset({"text"}), context)     # SmolLM2 -> Qwen2, --text wiki-en
    >>> int(fields["text_counts"].found.sum()), fields["notes"][0][:60]
    (1639, 'align: 110,778 of 112,417 new tokens never occur in --text w')
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenadapt.errors import InputError
from tokenadapt.methods.align import TokenSpans, count_matrix, parallel_counts, text_counts, token_spans
from tokenadapt.methods.base import Need, SparseCombination
from tokenadapt.methods.combine import sparse_matrix
from tokenadapt.methods.focus import focus_weights
from tokenadapt.methods.numbers import number_plan
from tokenadapt.methods.omp import omp_codes
from tokenadapt.options import TransplantOptions
from tokenadapt.report import Timings
from tokenadapt.vocab import Alignment, Assignment, Vocabulary, build_vocabulary
from tokenadapt.zoo.cache import cache_path, read_checked_array, write_checked_array

log = logging.getLogger("tokenadapt")
PARALLEL_MAX_PAIRS = 20_000_000  # token-position pairs the parallel aligner holds at once (about 1 GB)
DONOR_COVERAGE = 0.99  # share of the new vocabulary a donor must have (by bytes) to count as using its tokenizer
_FASTTEXT_SEPARATORS = str.maketrans({c: "\u2423" for c in " \n\r\t\v\f\0"})  # fastText splits words on these


@dataclass(frozen=True)
class Context:
    """Everything `extra_inputs` may use: the two vocabularies, the alignment, the ids being estimated [U], the old
    rows that are real tokens [V] and the options."""

    old_vocab: Vocabulary
    new_vocab: Vocabulary
    alignment: Alignment
    new_ids: np.ndarray
    old_candidates: torch.Tensor
    options: TransplantOptions
    timings: Timings
    progress: bool = False

    @property
    def old_rows(self) -> int:
        return int(self.old_candidates.shape[0])


def extra_inputs(needs: frozenset[Need], context: Context) -> dict[str, Any]:
    """MethodInputs fields for the needs "text", "focus", "donor" and for `--numbers auto`, plus `notes`."""
    fields: dict[str, Any] = {}
    notes: list[str] = []
    options = context.options
    if "text" in needs and options.parallel_text.strip():
        with context.timings.stage("align-parallel"):
            fields["text_counts"], described = parallel_text_counts(context)
        notes += _unplaced_note("align", fields["text_counts"], context, f"never occur in {described}")
        needs = needs - {"text"}
    if needs & {"text", "focus"}:
        with context.timings.stage("text"):
            documents, described = load_documents(options.text, options.text_max_bytes)
            new_spans = token_spans(context.new_vocab, documents)
        if "text" in needs:
            with context.timings.stage("align-text"):
                old_spans = token_spans(context.old_vocab, documents)
                counts = text_counts(new_spans, old_spans, context.new_ids, context.old_candidates)
            fields["text_counts"] = counts
            notes += _unplaced_note("align", counts, context, f"never occur in --text {described}")
        if "focus" in needs:
            with context.timings.stage("focus"):
                fields["focus"] = focus_inputs(new_spans, context)
            notes += _unplaced_note(
                "focus",
                fields["focus"],
                context,
                f"occur fewer than --focus-min-count {options.focus_min_count} times in --text {described}",
            )
    if "donor" in needs:
        with context.timings.stage("omp"):
            fields["omp"] = donor_codes(context)
        notes += _unplaced_note("omp", fields["omp"], context, f"have no row in the donor {options.donor}")
        good = fields["omp"].score[fields["omp"].found]
        if good.numel():
            share = float((good <= options.omp_max_residual).float().mean())
            notes.append(
                f"omp: median relative residual in the donor's space {float(good.median()):.2f}; "
                f"{share:.0%} of new tokens at or below --omp-max-residual {options.omp_max_residual} "
                "(omp-hybrid takes OMP for those, hybrid for the rest)"
            )
    if options.numbers == "auto":
        fields["numbers"] = number_plan(context.old_vocab, context.new_vocab, context.new_ids, context.old_candidates)
    fields["notes"] = tuple(notes)
    return fields


def parallel_text_counts(context: Context) -> tuple[SparseCombination, str]:
    """`align`'s count matrix from `--text` (new tokenizer) and `--parallel-text` (old tokenizer), and a description.

    Documents pair in order and lines pair within a document; a document pair whose non-empty line counts differ is
    skipped (and said), because a shifted line would align every later sentence with the wrong one.
    """
    options = context.options
    new_docs, _ = load_documents(options.text)
    old_docs, _ = load_documents(options.parallel_text)
    if len(new_docs) != len(old_docs):
        raise InputError(
            f"--text {options.text} has {len(new_docs)} documents but --parallel-text {options.parallel_text} has "
            f"{len(old_docs)}.",
            "Pass two texts with the same documents in the same order (e.g. --text debref-de --parallel-text "
            "debref-en), one translated sentence or paragraph per line.",
        )
    new_lines, old_lines, skipped = paired_lines(new_docs, old_docs, options.text_max_bytes)
    if not new_lines:
        raise InputError(
            f"--text {options.text} and --parallel-text {options.parallel_text} have no document whose lines pair up "
            f"({skipped} documents have different numbers of non-empty lines).",
            "Give both texts one translated sentence or paragraph per line, in the same order.",
        )
    new_ids = _line_ids(context.new_vocab, new_lines)
    old_ids = _line_ids(context.old_vocab, old_lines)
    # the aligner holds every (new, old) position pair of a line pair: cap the total to bound memory (~1 GB)
    pairs = np.cumsum([a.size * b.size for a, b in zip(new_ids, old_ids, strict=True)])
    kept = int(np.searchsorted(pairs, PARALLEL_MAX_PAIRS, side="right"))
    aligned = parallel_counts(new_ids[:kept], old_ids[:kept])
    counts = count_matrix(*aligned, context.new_ids, context.old_candidates)
    described = f"{kept:,} line pairs of --text {options.text} / --parallel-text {options.parallel_text}"
    if kept < len(new_lines):
        described += f" (the first {kept:,} of {len(new_lines):,}: the aligner holds {PARALLEL_MAX_PAIRS:,} pairs)"
    if skipped:
        described += f"; {skipped} document pairs skipped (their line counts differ)"
    return counts, described


def _line_ids(vocab: Vocabulary, lines: list[str], batch: int = 256) -> list[np.ndarray]:
    """Token ids of each line, no special tokens added."""
    ids: list[np.ndarray] = []
    for first in range(0, len(lines), batch):
        encoded = vocab.backend.encode_batch(lines[first : first + batch], add_special_tokens=False)
        ids += [np.asarray(e.ids, dtype=np.int64) for e in encoded]
    return ids


def paired_lines(new_docs: list[str], old_docs: list[str], max_bytes: int = 0) -> tuple[list[str], list[str], int]:
    """(new-side lines, old-side lines, documents skipped): the non-empty lines of each document pair, paired in
    order, up to `max_bytes` UTF-8 bytes of the new side (0 = all).

        >>> paired_lines(["Das Haus\n\nDer Hund"], ["The house\nThe dog"])
        (['Das Haus', 'Der Hund'], ['The house', 'The dog'], 0)
    """
    new_lines: list[str] = []
    old_lines: list[str] = []
    skipped = 0
    used = 0
    for new_doc, old_doc in zip(new_docs, old_docs, strict=True):
        new_part = [line.strip() for line in new_doc.splitlines() if line.strip()]
        old_part = [line.strip() for line in old_doc.splitlines() if line.strip()]
        if len(new_part) != len(old_part):
            skipped += 1
            continue
        for new_line, old_line in zip(new_part, old_part, strict=True):
            if max_bytes and used >= max_bytes:
                return new_lines, old_lines, skipped
            new_lines.append(new_line)
            old_lines.append(old_line)
            used += len(new_line.encode("utf-8"))
    return new_lines, old_lines, skipped


def _unplaced_note(method: str, combo: SparseCombination, context: Context, why: str) -> list[str]:
    missing = int((~combo.found).sum())
    if not missing:
        return []
    total = int(combo.found.shape[0])
    return [
        f"{method}: {missing:,} of {total:,} new tokens {why}; they took the {context.options.fallback} "
        f"estimate (--fallback; 'fallback-{context.options.fallback}' in the method paths)"
    ]


def load_documents(spec: str, max_bytes: int = 0) -> tuple[list[str], str]:
    """(documents, description) of `--text`: built-in names give their dev split, paths all their documents.

    Several texts are joined by commas (a path that exists is taken whole, commas and all). At most `max_bytes`
    UTF-8 bytes are read in total (0 = all), taken from each text in turn.

        >>> documents, described = load_documents("wiki-en,code-py")
        >>> described
        'wiki-en (dev split), code-py (dev split): 857,286 bytes'
    """
    from tokenadapt.zoo.texts import BUILTIN_TEXTS, load_text

    names = [spec] if Path(spec).exists() else [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise InputError("--text is empty.", "Pass a built-in text name (e.g. wiki-en) or a path.")
    documents: list[str] = []
    parts: list[str] = []
    left = max_bytes
    for name in names:
        builtin = name in BUILTIN_TEXTS
        corpus = load_text(name, split="dev" if builtin else "all")
        if max_bytes:
            if left <= 0:
                break
            corpus = corpus.truncated(left)
            left -= corpus.n_bytes
        documents += [d for d in corpus.documents if d]
        parts.append(f"{name} (dev split)" if builtin else name)
    total = sum(len(d.encode("utf-8")) for d in documents)
    if total == 0:
        raise InputError(f"--text {spec} holds no text.", "Pass a non-empty UTF-8 file or directory.")
    return documents, f"{', '.join(parts)}: {total:,} bytes"


def fasttext_vectors(
    spans: TokenSpans, vocab: Vocabulary, options: TransplantOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """fastText (CBOW, as FOCUS trains it) vectors of the new tokens in a tokenized text: ([V, dim], has one [V]).

    Each token is a "word" spelled as its vocabulary string (so fastText's character n-grams relate " trans" and
    " transplant"); a token gets a vector if the text holds it at least `--focus-min-count` times. One thread, so
    the same text and options give the same vectors.
    """
    try:
        import fasttext
    except ImportError as error:
        raise InputError(
            "--method focus trains fastText token vectors, and the fasttext package is not installed.",
            "Install it with: pip install 'tokenadapt[focus]' (or pip install fasttext-wheel).",
        ) from error
    words = np.array(
        [
            token.translate(_FASTTEXT_SEPARATORS) if token and data else ""
            for token, data in zip(vocab.tokens, vocab.canonical, strict=True)
        ],
        dtype=object,
    )
    ids_of: dict[str, list[int]] = {}
    for token_id, word in enumerate(words.tolist()):
        if word:
            ids_of.setdefault(word, []).append(token_id)
    vectors = torch.zeros((vocab.size, options.focus_dim))
    ok = torch.zeros(vocab.size, dtype=torch.bool)
    with tempfile.TemporaryDirectory(prefix="tokenadapt-focus-") as folder:
        corpus = Path(folder) / "tokens.txt"
        with corpus.open("w", encoding="utf-8") as out:
            for start, end in zip(np.concatenate([[0], spans.doc_ends[:-1]]), spans.doc_ends, strict=True):
                line = " ".join(w for w in words[spans.ids[start:end]].tolist() if w)
                if line:
                    out.write(line + "\n")
        model = fasttext.train_unsupervised(
            str(corpus),
            model="cbow",
            dim=options.focus_dim,
            epoch=options.focus_epochs,
            minCount=options.focus_min_count,
            neg=10,
            bucket=200_000,  # fastText's 2M default would allocate 2M x dim floats for n-grams
            thread=1,
            verbose=0,
        )
    for word in model.words:  # the words seen often enough: at most the vocabulary
        for token_id in ids_of.get(word, ()):
            vectors[token_id] = torch.from_numpy(model.get_word_vector(word))
            ok[token_id] = True
    return vectors, ok


def focus_inputs(new_spans: TokenSpans, context: Context) -> SparseCombination:
    """FOCUS weights of the estimated tokens over the shared tokens' old rows."""
    vectors, ok = fasttext_vectors(new_spans, context.new_vocab, context.options)
    shared = context.alignment.ids_of(Assignment.EXACT, Assignment.CANONICAL)
    shared = shared[ok[torch.from_numpy(shared)].numpy()]
    index = torch.from_numpy(context.new_ids)
    return focus_weights(
        vectors[index],
        ok[index],
        vectors[torch.from_numpy(shared)],
        torch.from_numpy(context.alignment.source[shared]),
        context.old_rows,
    )


def donor_codes(context: Context) -> SparseCombination:
    """OMP codes for the estimated tokens, found in the `--donor` model's input-embedding space."""
    from tokenadapt.tokenizer_io import load_tokenizer
    from tokenadapt.zoo import resolve_model

    options = context.options
    resolved = resolve_model(options.donor)
    donor_vocab = build_vocabulary(load_tokenizer(resolved.path))
    donor_of = donor_ids(context.new_vocab, donor_vocab)
    real = np.array([data is not None for data in context.new_vocab.canonical])
    coverage = float((donor_of[real] >= 0).mean()) if real.any() else 0.0
    if coverage < DONOR_COVERAGE:
        raise InputError(
            f"The donor {options.donor} does not use the target tokenizer: only {coverage:.1%} of the new "
            f"vocabulary's {int(real.sum()):,} tokens are in its vocabulary of {donor_vocab.size:,}.",
            "Pass as --donor a model trained with the tokenizer you transplant onto (for the built-in qwen2 "
            "tokenizer: qwen2.5-coder-0.5b), or choose another --method.",
        )
    embeddings = read_input_embeddings(resolved.path)
    if int(donor_of.max(initial=-1)) >= embeddings.shape[0]:
        raise InputError(
            f"The donor {options.donor}'s embedding matrix has {embeddings.shape[0]:,} rows, but its tokenizer "
            f"uses ids up to {int(donor_of.max()):,}.",
            "The donor's tokenizer and weights do not belong together: pass a complete model directory.",
        )
    shared = context.alignment.ids_of(Assignment.EXACT, Assignment.CANONICAL)
    shared = shared[donor_of[shared] >= 0]
    targets = donor_of[context.new_ids]
    found = torch.from_numpy(targets >= 0)
    log.info("omp: %d new tokens over %d anchors, k=%d", int(found.sum()), shared.size, options.omp_k)
    donor_new = embeddings[torch.from_numpy(np.maximum(targets, 0))]
    donor_anchors = embeddings[torch.from_numpy(donor_of[shared])]
    del embeddings
    anchor_old_ids = torch.from_numpy(context.alignment.source[shared])
    settings = f"omp-v1|{options.omp_k}|{options.omp_candidates}|{context.old_rows}|{options.omp_selection}"
    digest = hashlib.sha256(settings.encode())
    for array in (donor_new, donor_anchors, anchor_old_ids, found):
        digest.update(array.numpy().tobytes())
    paths = [cache_path("omp", f"{digest.hexdigest()[:32]}-{part}.npy") for part in ("index", "value", "residual")]
    cached = [array for array in (read_checked_array(path) for path in paths) if array is not None]
    if len(cached) == len(paths):  # the same donor rows, anchors and settings: reuse the codes
        index, value, residual = (torch.from_numpy(array) for array in cached)
        matrix = sparse_matrix(index[0], index[1], value, (int(found.shape[0]), context.old_rows))
        return SparseCombination(matrix=matrix, found=found, score=residual)
    codes = omp_codes(
        donor_new,
        donor_anchors,
        anchor_old_ids,
        found,
        context.old_rows,
        options.omp_k,
        options.omp_candidates,
        progress=context.progress,
        selection=options.omp_selection,
    )
    matrix = codes.matrix.coalesce()
    for path, array in zip(paths, (matrix.indices(), matrix.values(), codes.score), strict=True):
        write_checked_array(path, array.numpy())
    return codes


def donor_ids(vocab: Vocabulary, donor: Vocabulary) -> np.ndarray:
    """[V] the donor's id for each token of `vocab` with the same bytes (-1 for special tokens and missing ones)."""
    table = donor.id_by_bytes
    return np.array([table.get(data, -1) if data else -1 for data in vocab.canonical], dtype=np.int64)


_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")


def read_input_embeddings(folder: Path) -> torch.Tensor:
    """A model's input-embedding matrix [V, d] as float32, read alone from its safetensors files when the tensor's
    name is a known one (the other weights are never loaded), else from the loaded model."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names = [name for name in handle.keys() if name.endswith(_EMBEDDING_SUFFIXES)]  # noqa: SIM118
            if names:
                return handle.get_tensor(min(names, key=len)).to(torch.float32)
    from tokenadapt.checkpoint import load_causal_lm

    model = load_causal_lm(folder)
    return model.get_input_embeddings().weight.detach().to(torch.float32)
