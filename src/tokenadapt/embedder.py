"""Auxiliary text embeddings of vocabulary strings, batched and cached on disk.

The global and local heuristics compare tokens by what their text means, through a small sentence embedder
(all-MiniLM-L6-v2 by default). Embedding a 128k vocabulary takes minutes on a CPU, so:
- inputs are deduplicated by the embedder's own token ids (an uncased WordPiece embedder sees " The" and "the"
  as the same input), then sorted by length so batches carry almost no padding;
- the array for a whole vocabulary is cached under a key made of the embedder's fingerprint and the vocabulary's
  texts, with a sha256 sidecar: a corrupt entry is detected and rebuilt.

    >>> embedder = AuxEmbedder.load(resolve_embedder("minilm"))
    >>> vectors, ok = embed_vocabulary(embedder, vocab)   # [V, 384] L2-normalised, [V] bool
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenadapt.errors import InputError
from tokenadapt.vocab.canonical import Vocabulary
from tokenadapt.zoo.cache import cache_path, read_checked_array, sha256_tree, write_checked_array

InputKey = tuple[int, ...]  # the embedder's token ids for one text


@dataclass
class AuxEmbedder:
    """A Hugging Face encoder with mean pooling, used as a frozen text-similarity function."""

    name: str
    sha256: str  # of its folder's files (`sha256_tree`): two fine-tunes of one size must not share cached vectors
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    batch_size: int = 512
    max_length: int = 32  # vocabulary strings are short; a 30-byte supertoken is < 32 WordPieces

    @classmethod
    def load(cls, path: Path, name: str | None = None, batch_size: int = 512) -> AuxEmbedder:
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        except (OSError, ValueError) as error:
            raise InputError(
                f"Could not load the auxiliary embedder at {path}: {error}",
                "Pass --embedder minilm (built in) or a directory holding a Hugging Face encoder model.",
            ) from error
        return cls(
            name=name or path.name,
            sha256=sha256_tree(path),
            model=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
        )

    @property
    def fingerprint(self) -> str:
        """The part of `sha256` that cache keys use."""
        return self.sha256[:16]

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """[N, a] float32 L2-normalised embeddings (mean pooling over the encoder's last layer)."""
        return self.embed_inputs(self.input_keys(texts), progress)

    def input_keys(self, texts: list[str]) -> list[InputKey]:
        """What the encoder reads for each text: its token ids, special tokens included, truncated to max_length.

        Two texts with one key get one vector, so keys are what deduplication and reuse compare."""
        if not texts:
            return []
        if self._backend is not None:  # the Rust tokenizer alone: 2x faster than the wrapper's per-text objects
            return [tuple(encoding.ids) for encoding in self._backend.encode_batch(texts, add_special_tokens=True)]
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        return [tuple(ids) for ids in encoded["input_ids"]]

    @functools.cached_property
    def _backend(self) -> Any:
        """A copy of a fast tokenizer's Rust backend that truncates as the wrapper does; None for slow ones."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        backend = copy.deepcopy(backend)
        backend.enable_truncation(self.max_length)
        backend.no_padding()
        return backend

    def embed_inputs(self, keys: list[InputKey], progress: bool = False) -> np.ndarray:
        """[N, a] embeddings of tokenised inputs (`input_keys`), each distinct input encoded once."""
        if not keys:
            return np.zeros((0, self.dimension), dtype=np.float32)
        unique = list(dict.fromkeys(keys))
        position = {key: i for i, key in enumerate(unique)}
        lengths = np.array([len(key) for key in unique])
        order = np.argsort(lengths, kind="stable")  # by length, so batches carry almost no padding
        padded = np.full((len(unique), int(lengths.max())), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        for length in np.unique(lengths):  # one array per length, not one per input
            same = np.flatnonzero(lengths == length)
            padded[same, :length] = np.array([unique[i] for i in same], dtype=np.int64).reshape(len(same), length)
        vectors = np.zeros((len(unique), self.dimension), dtype=np.float32)
        bar = tqdm(total=len(unique), desc=f"embed ({self.name})", unit="str", disable=not progress)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = int(lengths[batch].max())
                ids = torch.from_numpy(padded[batch, :width])
                mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths[batch])[:, None]).long()
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
                vectors[batch] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                bar.update(len(batch))
        bar.close()
        return vectors[[position[key] for key in keys]]

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)


@dataclass(frozen=True)
class VocabularyEmbeddings:
    """Auxiliary embeddings of a vocabulary's tokens: `vectors` [N, a] (zero rows where `ok` is False).

    N is the vocabulary size, or the number of token ids asked for when `embed_vocabulary` got `token_ids`."""

    vectors: torch.Tensor
    ok: torch.Tensor  # [N] bool: the token has meaningful text (see Vocabulary.embedding_text)
    key: str  # identifies (embedder, the texts, the donor): what was cached, and what depends on it
    from_cache: bool
    rebuilt_corrupt_cache: bool = False
    texts: list[str | None] = field(default_factory=list, repr=False)  # [N] what was embedded
    inputs: list[InputKey | None] | None = field(default=None, repr=False)  # [N] what the embedder read, if known
    encoded: int = 0  # distinct inputs this call ran through the encoder (0 from the cache)
    lent: int = 0  # rows this call took from the donor


def embed_vocabulary(
    embedder: AuxEmbedder,
    vocab: Vocabulary,
    progress: bool = False,
    use_cache: bool = True,
    token_ids: np.ndarray | None = None,
    donor: VocabularyEmbeddings | None = None,
) -> VocabularyEmbeddings:
    """Embed the tokens `token_ids` of `vocab` (default: every token) that have text; cached on disk.

    A `donor` (embeddings by the same embedder of other texts, such as the old vocabulary) lends its vector to
    every token the embedder reads exactly as one of its texts, so only the rest is encoded. Transplanting
    SmolLM2 onto Qwen2 this way encodes 51,457 of the estimated tokens' 60,148 distinct inputs instead of all 76,891
    of the new vocabulary's. A lent row equals the donor's row bit for bit; the cache key names the donor.

        >>> old = embed_vocabulary(embedder, old_vocab)                        # [49152, 384]
        >>> new = embed_vocabulary(embedder, new_vocab, token_ids=estimated, donor=old)   # [len(estimated), 384]
    """
    ids = range(vocab.size) if token_ids is None else token_ids.tolist()
    texts = [vocab.embedding_text(i) for i in ids]
    lender = "" if donor is None else f"|donor {donor.key}|"
    key = hashlib.sha256(
        (embedder.fingerprint + lender + json.dumps(texts, ensure_ascii=False)).encode("utf-8", "surrogatepass")
    ).hexdigest()[:32]
    ok = torch.tensor([t is not None for t in texts], dtype=torch.bool)
    path = cache_path("embeddings", embedder.name.replace("/", "--"), f"{key}.npy")
    corrupt = False
    if use_cache and path.exists():
        loaded = read_checked_array(path)
        if loaded is not None and loaded.shape[0] == len(texts):
            return VocabularyEmbeddings(torch.from_numpy(loaded), ok, key, from_cache=True, texts=texts)
        corrupt = True
    inputs = _inputs_by_row(embedder, texts)
    vectors = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    lent = _donor_rows(embedder, donor, inputs)
    borrowed = [row for row, source in enumerate(lent) if source >= 0]
    if borrowed:
        assert donor is not None
        vectors[borrowed] = donor.vectors.numpy()[[lent[row] for row in borrowed]]
    pending = [
        (row, read)
        for row, (read, source) in enumerate(zip(inputs, lent, strict=True))
        if read is not None and source < 0
    ]
    vectors[[row for row, _ in pending]] = embedder.embed_inputs([read for _, read in pending], progress)
    if use_cache:
        write_checked_array(path, vectors)
    return VocabularyEmbeddings(
        torch.from_numpy(vectors),
        ok,
        key,
        from_cache=False,
        rebuilt_corrupt_cache=corrupt,
        texts=texts,
        inputs=inputs,
        encoded=len({read for _, read in pending}),
        lent=len(borrowed),
    )


def _inputs_by_row(embedder: AuxEmbedder, texts: list[str | None]) -> list[InputKey | None]:
    """[N] what the embedder reads for each text (`AuxEmbedder.input_keys`), None where there is no text."""
    rows = [row for row, text in enumerate(texts) if text is not None]
    inputs: list[InputKey | None] = [None] * len(texts)
    for row, read in zip(rows, embedder.input_keys([texts[row] for row in rows]), strict=True):  # type: ignore[misc]
        inputs[row] = read
    return inputs


def _donor_rows(embedder: AuxEmbedder, donor: VocabularyEmbeddings | None, inputs: list[InputKey | None]) -> list[int]:
    """For each input, the donor row the embedder reads identically (the first such row), or -1."""
    if donor is None:
        return [-1] * len(inputs)
    offered = donor.inputs if donor.inputs is not None else _inputs_by_row(embedder, donor.texts)  # cached: read again
    found: dict[InputKey, int] = {}
    for row, read in enumerate(offered):
        if read is not None:
            found.setdefault(read, row)
    return [-1 if read is None else found.get(read, -1) for read in inputs]
