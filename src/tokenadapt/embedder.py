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
from tokenadapt.zoo.cache import cache_path, read_checked_array, write_checked_array


@dataclass
class AuxEmbedder:
    """A Hugging Face encoder with mean pooling, used as a frozen text-similarity function."""

    name: str
    fingerprint: str
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
            fingerprint=_fingerprint(path),
            model=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
        )

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """[N, a] float32 L2-normalised embeddings (mean pooling over the encoder's last layer)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        keys = [tuple(ids) for ids in encoded["input_ids"]]
        unique = list(dict.fromkeys(keys))
        position = {key: i for i, key in enumerate(unique)}
        order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
        vectors = np.zeros((len(unique), self.dimension), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id or 0
        bar = tqdm(total=len(unique), desc=f"embed ({self.name})", unit="str", disable=not progress)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(unique[i]) for i in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):
                    ids[row, : len(unique[index])] = torch.tensor(unique[index])
                    mask[row, : len(unique[index])] = 1
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
                vectors[batch] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                bar.update(len(batch))
        bar.close()
        return vectors[[position[key] for key in keys]]

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)


def _fingerprint(path: Path) -> str:
    """Identity of an embedder: its config and tokenizer files plus the sizes of its weight files."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.suffix in {".json", ".txt"}:
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in {".safetensors", ".bin"}:
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class VocabularyEmbeddings:
    """Auxiliary embeddings of a whole vocabulary: `vectors` [V, a] (zero rows where `ok` is False)."""

    vectors: torch.Tensor
    ok: torch.Tensor  # [V] bool: the token has meaningful text (see Vocabulary.embedding_text)
    key: str  # identifies (embedder, vocabulary texts): what was cached, and what depends on it
    from_cache: bool
    rebuilt_corrupt_cache: bool = False


def embed_vocabulary(
    embedder: AuxEmbedder, vocab: Vocabulary, progress: bool = False, use_cache: bool = True
) -> VocabularyEmbeddings:
    """Embed every token of `vocab` that has text; cached per (embedder, vocabulary texts)."""
    texts = [vocab.embedding_text(i) for i in range(vocab.size)]
    key = hashlib.sha256(
        (embedder.fingerprint + json.dumps(texts, ensure_ascii=False)).encode("utf-8", "surrogatepass")
    ).hexdigest()[:32]
    ok = torch.tensor([t is not None for t in texts], dtype=torch.bool)
    path = cache_path("embeddings", embedder.name.replace("/", "--"), f"{key}.npy")
    corrupt = False
    if use_cache and path.exists():
        loaded = read_checked_array(path)
        if loaded is not None and loaded.shape[0] == vocab.size:
            return VocabularyEmbeddings(torch.from_numpy(loaded), ok, key, from_cache=True)
        corrupt = True
    present = [i for i, t in enumerate(texts) if t is not None]
    vectors = np.zeros((vocab.size, embedder.dimension), dtype=np.float32)
    vectors[present] = embedder.embed([texts[i] for i in present], progress=progress)  # type: ignore[misc]
    if use_cache:
        write_checked_array(path, vectors)
    return VocabularyEmbeddings(torch.from_numpy(vectors), ok, key, from_cache=False, rebuilt_corrupt_cache=corrupt)
