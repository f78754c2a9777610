"""Shared fixtures: tokenizers of three families trained in memory, tiny causal LMs and a tiny auxiliary embedder.

Nothing here touches the network; every model is built from a config with a fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokenizers split text into tokens; models read tokens, not text.",
    "A transplant moves a model onto a new tokenizer without any training.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "これは日本語のテストです。トークナイザーを学習します。",
    "def transplant(model, tokenizer):\n    return model  # 1234 + 5678 = 6912",
    "cats and dogs, cats and mice, the cat sat on the mat.",
] * 20


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request) -> None:  # type: ignore[no-untyped-def]
    """Unit tests get an empty cache of their own; integration tests share the user's cache (real downloads)."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("TOKENADAPT_CACHE", str(tmp_path_factory.mktemp("cache")))


def _wrap(tokenizer: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def train_byte_level(
    vocab_size: int = 400, specials: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return _wrap(tok, eos_token=specials[0], unk_token=None)


def train_metaspace(vocab_size: int = 450) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE (as converted Llama-2/Mistral tokenizers are): ▁ for spaces, <0xNN> byte-fallback
    tokens in the model vocabulary, <unk>/<s>/</s> as special tokens, a dummy-prefix normalizer."""
    specials = ["<unk>", "<s>", "</s>"]
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "▁")
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size))
    state = json.loads(trained.to_str())["model"]
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(state["vocab"], key=state["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return _wrap(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def train_wordpiece(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return _wrap(tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


def tiny_llama(vocab_size: int, tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).eval()


def save_model_dir(path: Path, tokenizer: PreTrainedTokenizerFast, tied: bool = True) -> Path:
    model = tiny_llama(len(tokenizer), tied=tied)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    return train_byte_level()


@pytest.fixture(scope="session")
def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    return train_metaspace()


@pytest.fixture(scope="session")
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    return train_wordpiece()


@pytest.fixture
def tied_model_dir(tmp_path: Path, byte_level_tokenizer: PreTrainedTokenizerFast) -> Path:
    return save_model_dir(tmp_path / "tied-model", byte_level_tokenizer, tied=True)


@pytest.fixture
def untied_model_dir(tmp_path: Path, byte_level_tokenizer: PreTrainedTokenizerFast) -> Path:
    return save_model_dir(tmp_path / "untied-model", byte_level_tokenizer, tied=False)


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def tied_or_untied_model_dir(
    request: pytest.FixtureRequest, tmp_path: Path, byte_level_tokenizer: PreTrainedTokenizerFast
) -> Path:
    """The tiny model saved tied, then untied (read `tie_word_embeddings` from its config to tell which)."""
    name = "tied-model" if request.param else "untied-model"
    return save_model_dir(tmp_path / name, byte_level_tokenizer, tied=request.param)


@pytest.fixture
def new_tokenizer_dir(tmp_path: Path, metaspace_tokenizer: PreTrainedTokenizerFast) -> Path:
    path = tmp_path / "new-tokenizer"
    metaspace_tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer: PreTrainedTokenizerFast) -> Path:
    """A 1-layer BERT with a WordPiece tokenizer: a stand-in for MiniLM with the same interface."""
    path = tmp_path_factory.mktemp("embedder")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(wordpiece_tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(path))
    wordpiece_tokenizer.save_pretrained(str(path))
    return path
