"""The transplant pipeline end to end on tiny models: shared rows kept, tied/untied, reload, report, determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tests.conftest import CORPUS
from tokenadapt.errors import InputError
from tokenadapt.options import TransplantOptions
from tokenadapt.transplant import REPORT_NAME, transplant
from tokenadapt.vocab import Assignment, align_vocabularies, build_vocabulary
from tokenadapt.zoo.cache import sha256_tree


def options(embedder: Path, **overrides: object) -> TransplantOptions:
    return TransplantOptions(embedder=str(embedder), **overrides)  # type: ignore[arg-type]


def weights_digest(out: Path) -> str:
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("tied", [True, False])
def test_transplant_keeps_shared_rows_and_reloads(
    tmp_path: Path,
    tied_model_dir: Path,
    untied_model_dir: Path,
    new_tokenizer_dir: Path,
    tiny_embedder_dir: Path,
    tied: bool,
) -> None:
    model_dir = tied_model_dir if tied else untied_model_dir
    out = tmp_path / "out"
    result = transplant(model_dir, new_tokenizer_dir, out, options(tiny_embedder_dir))

    old_model = AutoModelForCausalLM.from_pretrained(model_dir)
    new_model = AutoModelForCausalLM.from_pretrained(out)
    old_tok, new_tok = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(out)
    assert new_model.get_input_embeddings().weight.shape[0] == len(new_tok)
    assert new_model.config.vocab_size == len(new_tok)

    old_vocab, new_vocab = build_vocabulary(old_tok), build_vocabulary(new_tok)
    alignment = align_vocabularies(old_vocab, new_vocab, len(old_tok))
    copied = alignment.copied_ids
    assert len(copied) > 100
    old_in, new_in = old_model.get_input_embeddings().weight, new_model.get_input_embeddings().weight
    assert torch.equal(new_in[copied], old_in[alignment.source[copied]])
    if tied:
        assert new_model.get_output_embeddings().weight.data_ptr() == new_in.data_ptr()
        with safe_open(str(out / "model.safetensors"), "pt") as f:  # stored once
            assert sum("embed_tokens" in k or "lm_head" in k for k in f.keys()) == 1  # noqa: SIM118
    else:
        old_out, new_out = old_model.get_output_embeddings().weight, new_model.get_output_embeddings().weight
        assert new_out.data_ptr() != new_in.data_ptr()
        assert torch.equal(new_out[copied], old_out[alignment.source[copied]])
        estimated = alignment.estimated_ids
        assert not torch.allclose(new_out[estimated], new_in[estimated])  # the head got its own estimate
        assert set(result.method_paths) == {"input", "output"}

    report = json.loads((out / REPORT_NAME).read_text())
    assert report["counts"] == alignment.counts()
    assert report["counts"]["canonical"] > 0  # Ġ vs ▁ spellings matched by bytes
    assert report["options"]["top_k"] == 3 and report["method"] == "hybrid"
    assert report["verification"]["passed"]
    assert {"tokenadapt", "torch", "transformers"} <= set(report["versions"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "library_name: transformers" in card
    # the new tokenizer's special ids are what config and generation config now say
    assert new_model.config.eos_token_id == new_tok.eos_token_id
    assert new_model.generation_config.eos_token_id == new_tok.eos_token_id
    assert not list(tmp_path.glob(".out.*"))  # no temporary leftovers


def test_estimated_rows_follow_the_method(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    mean_out = tmp_path / "mean"
    # numbers="off": number tokens would take the digit-based estimate (tests/methods/test_numbers.py)
    transplant(tied_model_dir, new_tokenizer_dir, mean_out, options(tiny_embedder_dir, method="mean", numbers="off"))
    model = AutoModelForCausalLM.from_pretrained(mean_out)
    old = AutoModelForCausalLM.from_pretrained(tied_model_dir).get_input_embeddings().weight
    tok = AutoTokenizer.from_pretrained(mean_out)
    old_vocab = build_vocabulary(AutoTokenizer.from_pretrained(tied_model_dir))
    alignment = align_vocabularies(old_vocab, build_vocabulary(tok), old.shape[0])
    real = [i for i in range(old.shape[0]) if old_vocab.canonical[i]]
    estimated = alignment.estimated_ids
    assert torch.allclose(
        model.get_input_embeddings().weight[estimated],
        old[real].mean(0).expand(len(estimated), -1),
        atol=1e-6,
    )


def test_tokens_ending_in_whitespace_change_alone_and_are_counted(
    tmp_path: Path, tied_model_dir: Path, tiny_embedder_dir: Path
) -> None:
    # BPE without whitespace splitting learns tokens such as "the " and ":\n"
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trained.decoder = decoders.ByteLevel()
    trained.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    new_dir = tmp_path / "spans-whitespace"
    PreTrainedTokenizerFast(tokenizer_object=trained, eos_token="<|endoftext|>").save_pretrained(str(new_dir))
    runs = {}
    for mode in ("drop", "keep"):
        settings = options(tiny_embedder_dir, whitespace_tail=mode, prior="off")
        runs[mode] = transplant(tied_model_dir, new_dir, tmp_path / mode, settings)
    rows = {mode: AutoModelForCausalLM.from_pretrained(tmp_path / mode).get_input_embeddings().weight for mode in runs}

    tok = AutoTokenizer.from_pretrained(new_dir)
    old_vocab = build_vocabulary(AutoTokenizer.from_pretrained(tied_model_dir))
    alignment = align_vocabularies(old_vocab, build_vocabulary(tok), rows["keep"].shape[0])
    texts = {i: tok.decode([i]) for i in alignment.estimated_ids.tolist()}
    tails = sorted(i for i, text in texts.items() if text.strip() and text != text.rstrip())
    assert len(tails) >= 10 and runs["drop"].whitespace_tail_rows == len(tails)
    assert runs["keep"].whitespace_tail_rows is None
    changed = (rows["drop"] != rows["keep"]).any(dim=1).nonzero().flatten().tolist()
    assert changed == tails
    assert f"Whitespace tails: {len(tails)} tokens ending in whitespace" in runs["drop"].to_markdown()
    assert f"Whitespace tails: {len(tails)} tokens" in (tmp_path / "drop" / "README.md").read_text()


def test_same_inputs_give_byte_identical_weights(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    cold, warm = (
        transplant(tied_model_dir, new_tokenizer_dir, tmp_path / name, options(tiny_embedder_dir)) for name in "ab"
    )
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")  # the cached run writes the same bytes
    # the first run embedded and searched; the second found all three arrays cached, and the report says which
    aux = cold.auxiliary
    assert aux is not None and not aux["old"]["cached"] and not aux["new"]["cached"]
    assert aux["old"]["inputs_encoded"] > 0 and aux["new"]["tokens"] == cold.counts["estimated"]
    assert aux["new"]["inputs_encoded"] + aux["new"]["rows_lent_by_old"] <= aux["new"]["tokens"]
    assert aux["neighbors"] == {"cached": False, "k": 3}
    assert warm.auxiliary is not None
    assert warm.auxiliary["old"]["cached"] and warm.auxiliary["new"]["cached"] and warm.auxiliary["neighbors"]["cached"]
    assert "old vocabulary cached" in warm.to_markdown() and "inputs encoded" in cold.to_markdown()
    report = json.loads((tmp_path / "b" / REPORT_NAME).read_text())
    assert report["auxiliary"] == warm.auxiliary
    # every input is pinned by content: a local model folder and the embedder by their files' digest
    assert aux["embedder_sha256"] == warm.auxiliary["embedder_sha256"] == sha256_tree(tiny_embedder_dir)
    assert report["model"]["sha256"] == sha256_tree(tied_model_dir) and "folder" in report["model"]["sha256_of"]
    assert report["tokenizer"]["sha256"] is not None
    for name in ("ra", "rb"):
        transplant(
            tied_model_dir,
            new_tokenizer_dir,
            tmp_path / name,
            options(tiny_embedder_dir, method="random", seed=3),
        )
    assert weights_digest(tmp_path / "ra") == weights_digest(tmp_path / "rb")


def test_special_tokens_inherit_rows_by_role(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    out = tmp_path / "out"
    result = transplant(tied_model_dir, new_tokenizer_dir, out, options(tiny_embedder_dir, method="mean"))
    old = AutoModelForCausalLM.from_pretrained(tied_model_dir).get_input_embeddings().weight
    new = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    old_tok, new_tok = AutoTokenizer.from_pretrained(tied_model_dir), AutoTokenizer.from_pretrained(out)
    # new </s> (eos) and <s> (bos, no old bos: falls back to the end-of-text separator) copy old <|endoftext|>
    endoftext = old[old_tok.convert_tokens_to_ids("<|endoftext|>")]
    assert torch.equal(new[new_tok.eos_token_id], endoftext)
    assert torch.equal(new[new_tok.bos_token_id], endoftext)
    assert {s["new_token"]: s["how"] for s in result.specials}["<s>"] == "eos"


def test_padding_rows_are_added_and_never_break_reload(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    out = tmp_path / "out"
    result = transplant(tied_model_dir, new_tokenizer_dir, out, options(tiny_embedder_dir, pad_to_multiple_of=64))
    rows = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= result.tokenizer["size"] and rows == result.model["rows"]


def test_chat_template_is_carried_only_when_its_tokens_exist(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    config_path = tied_model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    (tied_model_dir / "chat_template.jinja").write_text(template)
    result = transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "a", options(tiny_embedder_dir, method="mean"))
    assert result.chat_template == {"status": "dropped", "missing": ["<|im_end|>", "<|im_start|>"]}
    assert not AutoTokenizer.from_pretrained(tmp_path / "a").chat_template
    # onto its own tokenizer every token exists: carried
    result = transplant(tied_model_dir, tied_model_dir, tmp_path / "b", options(tiny_embedder_dir, method="mean"))
    assert result.chat_template["status"] == "carried"
    assert AutoTokenizer.from_pretrained(tmp_path / "b").chat_template == template


def test_transplant_onto_its_own_tokenizer_is_lossless(
    tmp_path: Path, tied_model_dir: Path, tiny_embedder_dir: Path
) -> None:
    out = tmp_path / "same"
    result = transplant(tied_model_dir, tied_model_dir, out, options(tiny_embedder_dir))
    assert result.counts[Assignment.ESTIMATED.label] == 0
    old = AutoModelForCausalLM.from_pretrained(tied_model_dir).get_input_embeddings().weight
    new = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    assert torch.equal(old, new)


def test_a_second_run_reuses_cached_embeddings_and_neighbours(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    from tokenadapt.zoo.cache import cache_path

    transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "a", options(tiny_embedder_dir))
    neighbour_files = sorted(cache_path("neighbors").glob("*.npy"))
    assert len(neighbour_files) == 2
    stamps = [p.stat().st_mtime_ns for p in neighbour_files]
    transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "b", options(tiny_embedder_dir))
    assert [p.stat().st_mtime_ns for p in neighbour_files] == stamps  # read, not rewritten
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")
    neighbour_files[0].write_bytes(b"garbage")  # a corrupt entry is recomputed, with the same result
    transplant(tied_model_dir, new_tokenizer_dir, tmp_path / "c", options(tiny_embedder_dir))
    assert weights_digest(tmp_path / "c") == weights_digest(tmp_path / "a")


def test_the_package_function_stays_callable_after_its_module_is_imported(tmp_path: Path) -> None:
    import tokenadapt
    import tokenadapt.transplant as module  # rebinds the package attribute to the module

    assert tokenadapt.transplant is module or tokenadapt.transplant is module.transplant
    with pytest.raises(InputError, match="no-such-model"):  # the call reaches the real function
        tokenadapt.transplant(tmp_path / "no-such-model", "gpt2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_neighbour_form_changes_only_global_neighbours_and_auto_leaves_other_methods_alone(
    tmp_path: Path, tied_model_dir: Path, new_tokenizer_dir: Path, tiny_embedder_dir: Path
) -> None:
    runs = {
        name: transplant(tied_model_dir, new_tokenizer_dir, tmp_path / name, options(tiny_embedder_dir, **settings))
        for name, settings in {
            "global-auto": {"method": "global"},
            "global-ignore": {"method": "global", "neighbor_form": "ignore"},
            "global-match": {"method": "global", "neighbor_form": "match", "neighbor_form_bonus": 0.5},
            "local-match": {"method": "local", "neighbor_form": "match"},
            "local-ignore": {"method": "local", "neighbor_form": "ignore"},
        }.items()
    }
    assert weights_digest(tmp_path / "global-auto") == weights_digest(tmp_path / "global-ignore")
    assert weights_digest(tmp_path / "local-match") == weights_digest(tmp_path / "local-ignore")  # no neighbours
    assert weights_digest(tmp_path / "global-match") != weights_digest(tmp_path / "global-ignore")  # not cached over
    report = json.loads((tmp_path / "global-match" / "transplant_report.json").read_text())
    assert report["options"]["neighbor_form"] == "match" and report["options"]["neighbor_form_bonus"] == 0.5
    assert runs["global-match"].counts == runs["global-ignore"].counts
    forms = {name: runs[name].neighbor_form for name in ("global-match", "global-ignore")}
    assert forms["global-match"] is not None and forms["global-ignore"] is not None
    assert forms["global-match"]["bonus"] == 0.5 and forms["global-ignore"]["bonus"] == 0.0
    assert forms["global-match"]["same_word_start"] > forms["global-ignore"]["same_word_start"]
    assert runs["local-match"].neighbor_form is None  # local has no global neighbours
    line = f"Neighbour form: matched (+0.5 per shared form); {forms['global-match']['same_word_start']:.0%}"
    assert line in runs["global-match"].to_markdown()
    assert line in (tmp_path / "global-match" / "README.md").read_text()


def test_a_model_folder_is_hashed_unless_too_big_or_turned_off(
    tied_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tokenadapt.transplant as pipeline
    from tokenadapt.zoo.models import ResolvedModel

    folder = ResolvedModel("m", tied_model_dir, builtin=False, sha256=None, bos_policy="tokenizer")
    digest, of = pipeline.model_digest(folder, "auto")
    assert digest == sha256_tree(tied_model_dir) and "folder" in of
    assert pipeline.model_digest(folder, "off") == (
        None,
        "not computed (--hash-inputs off); --hash-inputs on hashes it",
    )
    monkeypatch.setattr(pipeline, "HASH_AUTO_MAX_BYTES", 1000)  # the tiny model's files are larger than this
    digest, of = pipeline.model_digest(folder, "auto")
    assert digest is None and "over --hash-inputs auto's" in of
    assert pipeline.model_digest(folder, "on")[0] == sha256_tree(tied_model_dir)
    pinned = dataclasses.replace(folder, sha256="ab" * 32)  # a built-in's or a .gguf's source file
    assert pipeline.model_digest(pinned, "off") == ("ab" * 32, "the source file")
