"""Every default lives here, once. The CLI builds its flags from these dataclasses' fields and their `help`.

>>> TransplantOptions().top_k, TransplantOptions(method="local").method
(3, 'local')
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from tokenadapt.errors import InputError

FULL_VERIFY_MAX_GB = 2.0  # models up to this size are reloaded and scored by verification
CHECKPOINT_IO = ("auto", "file-level", "in-memory")
FALLBACKS = ("hybrid", "local", "global", "subword-mean", "mean")  # methods that need no text or donor
PRIOR_FITS = ("form", "rank")  # prior.fit_prior_model


def raise_first_failure(checks: list[tuple[bool, str]]) -> None:
    """Raise an InputError for the first (ok, message) check that failed."""
    for ok, message in checks:
        if not ok:
            raise InputError(f"Invalid option: {message}.", "Fix the value and run again.")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TransplantOptions:
    """How to transplant. Defaults for top_k, temperature, global_weight and threshold are the TokenAdapt code's."""

    method: str = _opt("hybrid", "initialisation method for new tokens (see `tokenadapt list`)")
    embedder: str = _opt("minilm", "auxiliary embedder: a built-in name, a local directory or a Hub id")
    top_k: int = _opt(3, "neighbours per new token for the global estimate")
    temperature: float = _opt(0.3, "softmax temperature for local and global weights")
    global_weight: float = _opt(0.3, "share of the global estimate in hybrid (0 = local only, 1 = global only)")
    threshold: float = _opt(0.0, "minimum cosine similarity for a neighbour to count")
    match: str = _opt("bytes", "shared-token matching: 'bytes' (canonical) or 'string' (the paper code's)")
    pad_to_multiple_of: int = _opt(1, "pad the embedding rows to a multiple of this (1 = no padding)")
    seed: int = _opt(0, "random seed (used by the 'random' method)")
    embed_batch_size: int = _opt(512, "auxiliary-embedder batch size")
    hash_inputs: str = _opt(
        "auto",
        "sha256 of a local or Hub model folder's files for the report: 'auto' up to 4 GiB of files (about 1 s per "
        "GB, remembered per file until it changes), 'on' at any size, 'off' never (the report then says so)",
    )
    overwrite: bool = _opt(False, "replace OUT if it exists")
    verify: bool = _opt(True, "check the output before moving it into place")
    full_verify_max_gb: float = _opt(
        FULL_VERIFY_MAX_GB, "verification also reloads the model and scores a short text up to this size (GB)"
    )
    checkpoint_io: str = _opt(
        "auto",
        "auto: rewrite only the embedding tensors of safetensors checkpoints of known architectures "
        "(file-level), load anything else whole (in-memory); or force file-level / in-memory",
    )
    link_shards: bool = _opt(
        False,
        "file-level: hard-link unchanged shards into OUT instead of copying (fast, but a later in-place write to "
        "OUT would change the input too)",
    )
    text: str = _opt(
        "",
        "align, focus: text to learn from: a built-in name (its dev split, so its test split stays unseen by "
        "evaluation), a local file or directory; several joined by commas",
    )
    text_max_bytes: int = _opt(16_000_000, "align, focus: read at most this many UTF-8 bytes of --text (0 = all)")
    parallel_text: str = _opt(
        "",
        "align: the same content as --text in the old model's language, line for line (built-in name or path); "
        "new tokens are then aligned across languages by IBM Model 1 instead of by shared bytes",
    )
    align_smoothing: float = _opt(
        1.0, "align: pseudo-count of the --fallback estimate mixed into each aligned token (0 = text counts only)"
    )
    focus_dim: int = _opt(100, "focus: dimension of the fastText token vectors trained on --text")
    focus_epochs: int = _opt(5, "focus: fastText training epochs over --text")
    focus_min_count: int = _opt(3, "focus: occurrences in --text a token needs to get a fastText vector")
    donor: str = _opt(
        "", "omp: a model that already uses the target tokenizer (built-in name, folder, .gguf or Hub id)"
    )
    omp_k: int = _opt(
        4, "omp: shared anchor tokens combined per new token (mergekit's 64 transferred far worse: docs/design.md)"
    )
    omp_selection: str = _opt(
        "inner",
        "omp: pick the anchor with the largest |inner product| with the residual (inner, as mergekit) or the "
        "largest |cosine| (cosine, textbook OMP)",
    )
    omp_candidates: int = _opt(
        128, "omp: anchors screened per token, most similar in donor space first (0 = all: exact, slow on CPU)"
    )
    omp_max_residual: float = _opt(
        0.5, "omp-hybrid: OMP where its relative residual in donor space is at most this, hybrid elsewhere"
    )
    fallback: str = _opt(
        "hybrid", "align, focus, omp: estimate for tokens they cannot place: hybrid, local, global, subword-mean, mean"
    )
    prior: str = _opt(
        "auto",
        "prior calibration of the estimated rows' mean logits by the new tokenizer's frequency order (prior.py): "
        "'auto' (on for hybrid, off for the other methods, which stay as published), 'on' or 'off' (the paper's "
        "hybrid)",
    )
    prior_weight: float = _opt(0.5, "prior calibration: share of the way to the predicted mean logit (0-1)")
    prior_fit: str = _opt(
        "form",
        "prior calibration: what predicts a token's mean logit: 'form' (frequency rank, with a line per class of "
        "word start, word middle, punctuation and other, plus byte length) or 'rank' (one line on frequency rank)",
    )
    whitespace_tail: str = _opt(
        "auto",
        "local estimate of a token that ends in whitespace (',\\n', ')\\n\\n'): 'drop' weighs only the pieces "
        "before the whitespace, 'keep' weighs every piece (the paper's), 'auto' drops for hybrid and keeps for "
        "the other methods, which stay as published",
    )
    neighbor_form: str = _opt(
        "auto",
        "global neighbours of a new token: 'match' prefers old tokens of its own word start (leading space) and "
        "letter case, which the uncased auxiliary embedder cannot see; 'ignore' ranks by similarity alone (the "
        "paper's); 'auto' matches for hybrid and ignores for the other methods, which stay as published",
    )
    neighbor_form_bonus: float = _opt(
        0.1, "--neighbor-form match: similarity added per form (word start, case) a neighbour shares (0-1)"
    )
    numbers: str = _opt(
        "off",
        "number tokens (digits, optional leading space): 'auto' mixes in a digit-based estimate (measured worse on "
        "SmolLM2 -> Llama-3, see methods/numbers.py), 'off' leaves them to the method",
    )

    def validated(self) -> TransplantOptions:
        """Self, after checking every value; raises InputError naming the bad option and its valid range."""
        from tokenadapt.methods import get_method, method_names

        checks: list[tuple[bool, str]] = [
            (self.method in method_names(), f"--method must be one of {', '.join(method_names())}"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.temperature > 0, "--temperature must be greater than 0"),
            (0.0 <= self.global_weight <= 1.0, "--global-weight must be between 0 and 1"),
            (-1.0 <= self.threshold <= 1.0, "--threshold is a cosine similarity, between -1 and 1"),
            (self.match in ("bytes", "string"), "--match must be 'bytes' or 'string'"),
            (self.pad_to_multiple_of >= 1, "--pad-to-multiple-of must be at least 1"),
            (self.embed_batch_size >= 1, "--embed-batch-size must be at least 1"),
            (self.full_verify_max_gb >= 0, "--full-verify-max-gb must be 0 or more"),
            (self.checkpoint_io in CHECKPOINT_IO, f"--checkpoint-io must be one of {', '.join(CHECKPOINT_IO)}"),
            (self.hash_inputs in ("auto", "on", "off"), "--hash-inputs must be 'auto', 'on' or 'off'"),
            (self.text_max_bytes >= 0, "--text-max-bytes must be 0 (all) or more"),
            (self.align_smoothing >= 0, "--align-smoothing must be 0 or more"),
            (self.focus_dim >= 1 and self.focus_epochs >= 1, "--focus-dim and --focus-epochs must be at least 1"),
            (self.focus_min_count >= 1, "--focus-min-count must be at least 1"),
            (self.omp_k >= 1, "--omp-k must be at least 1"),
            (self.omp_selection in ("inner", "cosine"), "--omp-selection must be inner or cosine"),
            (self.omp_candidates == 0 or self.omp_candidates >= self.omp_k, "--omp-candidates must be 0 or >= --omp-k"),
            (self.omp_max_residual >= 0, "--omp-max-residual must be 0 or more"),
            (self.fallback in FALLBACKS, f"--fallback must be one of {', '.join(FALLBACKS)}"),
            (self.numbers in ("auto", "off"), "--numbers must be 'auto' or 'off'"),
            (self.prior in ("auto", "on", "off"), "--prior must be 'auto', 'on' or 'off'"),
            (0.0 <= self.prior_weight <= 1.0, "--prior-weight must be between 0 and 1"),
            (self.prior_fit in PRIOR_FITS, f"--prior-fit must be one of {', '.join(PRIOR_FITS)}"),
            (self.whitespace_tail in ("auto", "drop", "keep"), "--whitespace-tail must be 'auto', 'drop' or 'keep'"),
            (self.neighbor_form in ("auto", "match", "ignore"), "--neighbor-form must be 'auto', 'match' or 'ignore'"),
            (0.0 <= self.neighbor_form_bonus <= 1.0, "--neighbor-form-bonus must be between 0 and 1"),
        ]
        raise_first_failure(checks)
        if self.prior == "on" and not get_method(self.method).column_separable:
            raise InputError(
                f"--prior on cannot calibrate --method {self.method}: its rows are not a linear combination of "
                "the old rows, so their mean logits cannot be computed ahead of them.",
                "Drop --prior on, or choose another method.",
            )
        if self.method in ("align", "focus") and not self.text.strip():
            raise InputError(
                f"--method {self.method} learns from a text, and none was given.",
                "Add --text NAME (a built-in text such as wiki-en, whose dev split is used) or --text PATH "
                "(a UTF-8 file or directory), or choose another method.",
            )
        if self.parallel_text.strip() and self.method != "align":
            raise InputError(
                f"--parallel-text is read only by --method align, not {self.method}.",
                "Add --method align, or drop --parallel-text.",
            )
        if self.method in ("omp", "omp-hybrid") and not self.donor.strip():
            raise InputError(
                f"--method {self.method} needs a donor model that already uses the target tokenizer.",
                "Add --donor MODEL (e.g. --donor qwen2.5-coder-0.5b for the qwen2 tokenizer), "
                "or choose another method.",
            )
        return self

    @property
    def prior_active(self) -> bool:
        """Whether the estimated rows get prior calibration (`--prior auto` means: for hybrid)."""
        return self.prior_weight > 0 and (self.prior == "on" or (self.prior == "auto" and self.method == "hybrid"))

    @property
    def drops_whitespace_tail(self) -> bool:
        """Whether local estimates leave out trailing whitespace pieces (`--whitespace-tail auto`: for hybrid)."""
        return self.whitespace_tail == "drop" or (self.whitespace_tail == "auto" and self.method == "hybrid")

    @property
    def neighbor_form_bonus_active(self) -> float:
        """The form bonus the neighbour search uses: 0 unless `--neighbor-form` matches (auto: for hybrid)."""
        matches = self.neighbor_form == "match" or (self.neighbor_form == "auto" and self.method == "hybrid")
        return self.neighbor_form_bonus if matches else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VerifyOptions:
    """How `tokenadapt verify` checks a model directory."""

    full_verify_max_gb: float = _opt(
        FULL_VERIFY_MAX_GB, "reload the model and score a short text up to this size (GB); header checks always run"
    )


@dataclass(frozen=True)
class EvalOptions:
    """How to score a model on a text."""

    context: int = _opt(512, "tokens of context per scoring window")
    stride: int = _opt(512, "tokens scored per window (at most context - 1 are scored with full context)")
    bos: str = _opt("auto", "prepend bos: 'auto' (if the tokenizer adds it), 'always' or 'never'")
    max_bytes: int = _opt(20000, "score only the first N UTF-8 bytes of each text (0 = all)")

    def validated(self) -> EvalOptions:
        checks: list[tuple[bool, str]] = [
            (self.context >= 2, "--context must be at least 2"),
            (self.stride >= 1, "--stride must be at least 1"),
            (self.bos in ("auto", "always", "never"), "--bos must be auto, always or never"),
            (self.max_bytes >= 0, "--max-bytes must be 0 or more"),
        ]
        raise_first_failure(checks)
        return self


@dataclass(frozen=True)
class TrainTokenizerOptions:
    """How to train a tokenizer. The supertoken defaults follow the TokenAdapt SuperTokenizer code."""

    mode: str = _opt("bpe", "bpe (regex pre-tokenized control), supertoken (the paper's) or superbpe (two-stage)")
    vocab_size: int = _opt(32000, "tokens in the vocabulary, special tokens included")
    min_frequency: int = _opt(2, "a pair must occur this often to be merged")
    max_token_length: int = _opt(30, "longest token in characters (supertoken mode; 0 = no limit)")
    spans: str = _opt("words", "supertoken: cut training spans at whole words, or at 4-23 'chars' (the paper's)")
    split: str = _opt("dev", "split of built-in texts to train on: dev (keeps test unseen for evaluation), test or all")
    max_bytes: int = _opt(0, "train on at most this many UTF-8 bytes of text (0 = all of it)")
    held_out: float = _opt(0.05, "share of the text's chunks held out to measure compression on unseen text")
    transition: float = _opt(0.9, "superbpe: share of the vocabulary learned by ordinary BPE before stage 2")
    max_words: int = _opt(3, "superbpe, and supertoken with --spans words: most words in one span")
    seed: int = _opt(0, "random seed for the supertoken span cuts")
    bos_token: str = _opt("<s>", "beginning-of-sequence token ('' for none)")
    eos_token: str = _opt("</s>", "end-of-sequence token ('' for none)")
    pad_token: str = _opt("<pad>", "padding token ('' for none)")
    unk_token: str = _opt("<unk>", "unknown token ('' for none; byte-level tokenizers never emit it)")
    hash_inputs: str = _opt(
        "auto",
        "sha256 of a local or Hub model folder's files for the report: 'auto' up to 4 GiB of files (about 1 s per "
        "GB, remembered per file until it changes), 'on' at any size, 'off' never (the report then says so)",
    )
    overwrite: bool = _opt(False, "replace OUT if it exists")

    @property
    def special_tokens(self) -> dict[str, str]:
        """Role -> spelling of each special token asked for, in id order (bos gets id 0)."""
        roles = {"bos": self.bos_token, "eos": self.eos_token, "pad": self.pad_token, "unk": self.unk_token}
        return {role: token for role, token in roles.items() if token}

    def validated(self) -> TrainTokenizerOptions:
        from tokenadapt.training.modes import mode_names

        specials = list(self.special_tokens.values())
        smallest = 256 + len(specials)
        checks: list[tuple[bool, str]] = [
            (self.mode in mode_names(), f"--mode must be one of {', '.join(mode_names())}"),
            (
                self.vocab_size > smallest,
                f"--vocab-size must be more than the 256 bytes plus {len(specials)} special tokens ({smallest})",
            ),
            (self.min_frequency >= 1, "--min-frequency must be at least 1"),
            (self.max_token_length >= 0, "--max-token-length must be 0 (no limit) or more"),
            (self.split in ("dev", "test", "all"), "--split must be dev, test or all"),
            (self.max_bytes >= 0, "--max-bytes must be 0 (no limit) or more"),
            (self.spans in ("words", "chars"), "--spans must be words or chars"),
            (0.0 <= self.held_out < 0.5, "--held-out must be at least 0 and below 0.5"),
            (0.0 < self.transition < 1.0, "--transition must be between 0 and 1 (exclusive)"),
            (
                self.mode != "superbpe" or int(self.transition * self.vocab_size) > smallest,
                f"--transition x --vocab-size must leave stage 1 more than {smallest} tokens",
            ),
            (self.max_words >= 1, "--max-words must be at least 1"),
            (len(set(specials)) == len(specials), "the special tokens must be different from each other"),
        ]
        raise_first_failure(checks)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BenchOptions:
    """Which cells `tokenadapt bench` runs (an empty `methods` means every registered method)."""

    models: tuple[str, ...] = _opt(("smollm2-135m",), "base models")
    targets: tuple[str, ...] = _opt(("llama3", "qwen2", "gpt2", "mistral-v3"), "target tokenizers (names or paths)")
    methods: tuple[str, ...] = _opt((), "methods (default: every registered method)")
    texts: tuple[str, ...] = _opt(
        ("wiki-en", "pydocs-en", "debref-en", "debref-de", "debref-ja", "code-py"), "texts to score on"
    )
    max_bytes: int = _opt(20000, "score the first N bytes of each text")
    context: int = _opt(
        512,
        "tokens per scoring window (windows do not overlap; bos only where the base model's tokenizer adds one, "
        "as Gemma's does)",
    )
    transplant_flags: str = _opt("", "extra flags for every transplant, e.g. '--top-k 5'")
    heal: str = _opt(
        "",
        "also heal every cell for this budget ('20m', '300steps') on the dev split of --texts and score it "
        "(a 'healed' column); empty: zero-shot only",
    )
    heal_flags: str = _opt("", "extra flags for every heal, e.g. '--objective distill'")
    work: str = _opt("", "where cells and scores are kept (default: the cache's bench/ folder)")

    def validated(self) -> BenchOptions:
        from tokenadapt.methods import method_names

        unknown = [m for m in self.methods if m not in method_names()]
        checks: list[tuple[bool, str]] = [
            (not unknown, f"unknown --methods {', '.join(unknown)}; choose from {', '.join(method_names())}"),
            (bool(self.models and self.targets and self.texts), "--models, --targets and --texts need a value each"),
            (self.max_bytes > 0, "--max-bytes must be positive"),
            (self.context >= 2, "--context must be at least 2"),
        ]
        raise_first_failure(checks)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HEAL_OBJECTIVES = ("ntp", "distill")
HEAL_ROWS = ("new", "all")
HEAL_OPTIMIZERS = ("adam", "lazy-adam", "sgd")
HEAL_FITS = ("affine", "rows")
HEAL_MAP_FEATURES = ("auto", "estimate", "pieces")


@dataclass(frozen=True)
class HealOptions:
    """How `tokenadapt heal` trains a transplanted model's embedding rows with the transformer body frozen."""

    objective: str = _opt(
        "ntp",
        "ntp: next-token loss on the text; distill: match the teacher's likelihood of the same text spans "
        "(chunks where both tokenizations have a boundary). ntp healed more per minute (docs/results.md)",
    )
    teacher: str = _opt(
        "",
        "the original model (built-in name, folder, .gguf or Hub id); default: the model named in the "
        "directory's transplant_report.json. distill needs it; --rows new uses its tokenizer to find the new rows",
    )
    rows: str = _opt(
        "new",
        "rows to train: 'new' (those the transplant estimated) or 'all' embedding rows (with --fit affine and "
        "residuals, the map writes the new rows and each copied row trains by its own correction)",
    )
    budget: str = _opt("20m", "stop after this long: minutes ('20m' or a plain number) or optimizer steps ('300steps')")
    fit: str = _opt(
        "affine",
        "affine: one map shared by the trained rows (row = A @ estimate + b), so tokens the text never shows heal "
        "too; rows: every trained row moves on its own (docs/results.md compares them)",
    )
    map_features: str = _opt(
        "auto",
        "--fit affine: what the map reads for each row. estimate: its zero-shot row; pieces: that and the original "
        "model's rows of the first and last old-tokenizer piece of the token (needs the original model); auto: "
        "pieces where the original model is known, else estimate",
    )
    untie: bool = _opt(
        False,
        "give a tied model its own output matrix, so input and output rows heal apart (a map each with --fit "
        "affine); the saved model is untied: one more [V, d] matrix on disk",
    )
    learning_rate: float = _opt(
        3e-3, "Adam learning rate for the trained rows, or for the map's offset b (no weight decay)"
    )
    map_learning_rate: float = _opt(
        3e-4, "--fit affine: Adam learning rate for the map's matrix A (which starts as the identity)"
    )
    residual_learning_rate: float = _opt(
        3e-3,
        "--fit affine: also give every mapped row its own correction on top of the map (row = A @ f + b + delta_r), "
        "trained at this Adam learning rate while its token is in the batch (more of the gap closed in 20 minutes: "
        "docs/results.md); 0: the map alone. --fit rows ignores it: there every row moves on its own",
    )
    copied_learning_rate: float = _opt(
        7.5e-4,
        "--rows all with --fit affine: Adam learning rate of the copied rows' corrections (a quarter of the new rows' "
        "closed the most of the gap in 20 minutes; at the same rate English got worse: docs/results.md)",
    )
    gradient_samples: int = _opt(
        64,
        "--fit affine: estimate the head's softmax gradient (unbiased) from each position's N most probable tokens "
        "and N draws from the rest, which skips two [T, V] x [V, d] products a step (a third faster, same held-out "
        "curve: docs/results.md); 0: exact",
    )
    train_inputs: bool = _opt(
        True,
        "train the rows as inputs too (backpropagates through the frozen body); off: only the output head's "
        "gradient trains them, with no backward through the body (about twice the tokens per minute)",
    )
    sparse_updates: bool = _opt(
        True,
        "--fit rows: each step's gradient reaches only the rows of tokens in its batch; off: the full-softmax "
        "gradient reaches every trainable row, and Adam's per-row scaling turns its tiny pushes on unseen tokens "
        "into full-size steps",
    )
    optimizer: str = _opt(
        "adam",
        "adam: a row keeps moving on its momentum for some steps after its token left the batch (measured best); "
        "lazy-adam: a row's value and moments change only at steps whose batch holds its token (with "
        "--sparse-updates); sgd: momentum SGD, a row moves in proportion to its gradient, so a token seen once moves "
        "little (its learning rate is on another scale: about 100x Adam's)",
    )
    warmup_steps: int = _opt(4, "linear learning-rate warmup over this many optimizer steps")
    decay: str = _opt(
        "linear",
        "after warm-up: 'linear' down to 0 at the end of the budget (by steps, or by time for a minutes budget), or "
        "'constant'",
    )
    context: int = _opt(512, "tokens per training sequence")
    batch_size: int = _opt(2, "sequences per optimizer step (processed one at a time: memory stays one sequence's)")
    eval_every: int = _opt(16, "score the held-out slice every N optimizer steps")
    patience: int = _opt(2, "stop after this many held-out scorings without improvement; the best rows are kept")
    held_out_bytes: int = _opt(8000, "held-out slice per text: its last N UTF-8 bytes, never trained on")
    max_train_bytes: int = _opt(2_000_000, "train on at most this many UTF-8 bytes of each text (0 = all)")
    split: str = _opt("dev", "split of built-in texts to heal on (dev keeps test unseen by `eval` and the benchmark)")
    seed: int = _opt(0, "random seed for the order of training sequences")
    hash_inputs: str = _opt(
        "auto",
        "sha256 of a local or Hub model folder's files for the report: 'auto' up to 4 GiB of files (about 1 s per "
        "GB, remembered per file until it changes), 'on' at any size, 'off' never (the report then says so)",
    )
    overwrite: bool = _opt(False, "replace OUT if it exists")

    def validated(self) -> HealOptions:
        checks: list[tuple[bool, str]] = [
            (self.objective in HEAL_OBJECTIVES, f"--objective must be one of {', '.join(HEAL_OBJECTIVES)}"),
            (self.rows in HEAL_ROWS, f"--rows must be one of {', '.join(HEAL_ROWS)}"),
            (self.learning_rate > 0, "--learning-rate must be positive"),
            (self.map_learning_rate > 0, "--map-learning-rate must be positive"),
            (self.residual_learning_rate >= 0, "--residual-learning-rate must be 0 (off) or positive"),
            (self.copied_learning_rate > 0, "--copied-learning-rate must be positive"),
            (self.gradient_samples >= 0, "--gradient-samples must be 0 (exact) or positive"),
            (self.fit in HEAL_FITS, f"--fit must be one of {', '.join(HEAL_FITS)}"),
            (self.fit == "rows" or self.optimizer != "lazy-adam", "--optimizer lazy-adam needs --fit rows"),
            (
                self.map_features in HEAL_MAP_FEATURES,
                f"--map-features must be one of {', '.join(HEAL_MAP_FEATURES)}",
            ),
            (self.map_features != "pieces" or self.fit == "affine", "--map-features pieces needs --fit affine"),
            (self.warmup_steps >= 0, "--warmup-steps must be 0 or more"),
            (self.decay in ("constant", "linear"), "--decay must be constant or linear"),
            (self.optimizer in HEAL_OPTIMIZERS, f"--optimizer must be one of {', '.join(HEAL_OPTIMIZERS)}"),
            (self.optimizer != "lazy-adam" or self.sparse_updates, "--optimizer lazy-adam needs --sparse-updates"),
            (self.context >= 8, "--context must be at least 8"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.patience >= 1, "--patience must be at least 1"),
            (self.held_out_bytes >= 256, "--held-out-bytes must be at least 256"),
            (self.max_train_bytes >= 0, "--max-train-bytes must be 0 (all) or more"),
            (self.split in ("dev", "test", "all"), "--split must be dev, test or all"),
        ]
        raise_first_failure(checks)
        self.budget_limit()
        return self

    @property
    def reads_pieces(self) -> bool:
        """Whether the affine map reads the pieces' old rows (`--map-features pieces`, or `auto`; both need the
        original model, without which `auto` reads the estimate only).

        >>> HealOptions().reads_pieces, HealOptions(rows="all").reads_pieces, HealOptions(fit="rows").reads_pieces
        (True, True, False)
        """
        return self.fit == "affine" and self.map_features in ("pieces", "auto")

    def budget_limit(self) -> tuple[float | None, int | None]:
        """(seconds, steps) from --budget; exactly one is set.

        >>> HealOptions(budget="20m").budget_limit(), HealOptions(budget="300steps").budget_limit()
        ((1200.0, None), (None, 300))
        """
        text = self.budget.strip().lower().replace(" ", "")
        steps = re.fullmatch(r"(\d+)steps?", text)
        minutes = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:m|min)?", text)
        if steps and int(steps.group(1)) >= 1:
            return None, int(steps.group(1))
        if minutes and float(minutes.group(1)) > 0:
            return float(minutes.group(1)) * 60.0, None
        raise InputError(
            f"Invalid option: --budget {self.budget!r} is neither minutes nor steps.",
            "Give minutes ('20m' or '20') or optimizer steps ('300steps').",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
