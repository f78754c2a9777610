"""Special tokens by role, across model families.

A new tokenizer's `<|begin_of_text|>` should inherit the embedding of whatever token the old model used to start a
document, not an embedding of the *text* "<|begin_of_text|>". Roles come from two sources: the token's string, when
it is one of the well-known spellings below, and the tokenizer's declared bos/eos/pad/unk attributes. Strings are
trusted first because declared attributes are often repurposed (SmolLM2-Instruct declares `<|im_start|>` as bos).

    >>> ROLE_BY_STRING["<|eot_id|>"], ROLE_BY_STRING["<end_of_turn>"]
    ('turn_end', 'turn_end')
"""

from __future__ import annotations

from typing import Any

KNOWN_SPELLINGS: dict[str, tuple[str, ...]] = {
    "bos": (
        "<s>",
        "<|begin_of_text|>",
        "<bos>",
        "<|startoftext|>",
        "[BOS]",
        "<BOS>",
        "<|begin▁of▁sentence|>",
    ),
    "eos": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "[EOS]", "<EOS>", "<|end▁of▁sentence|>"),
    "pad": (
        "<pad>",
        "<|pad|>",
        "[PAD]",
        "<|padding|>",
        "<|finetune_right_pad_id|>",
        "<PAD>",
        "<|vision_pad|>",
    ),
    "unk": ("<unk>", "[UNK]", "<|unk|>", "<UNK>"),
    "turn_start": ("<|im_start|>", "<start_of_turn>", "<|start_header_id|>", "[INST]", "<|start|>"),
    "turn_end": ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "[/INST]", "<|end|>", "<|eom_id|>"),
    "header_end": ("<|end_header_id|>",),
    "fim_prefix": ("<|fim_prefix|>", "<fim_prefix>", "<PRE>", "[PREFIX]"),
    "fim_middle": ("<|fim_middle|>", "<fim_middle>", "<MID>", "[MIDDLE]"),
    "fim_suffix": ("<|fim_suffix|>", "<fim_suffix>", "<SUF>", "[SUFFIX]"),
    "fim_pad": ("<|fim_pad|>", "<fim_pad>"),
    "tool_call_start": ("<tool_call>", "[TOOL_CALLS]"),
    "tool_call_end": ("</tool_call>",),
    "think_start": ("<think>",),
    "think_end": ("</think>",),
    "system": ("[SYSTEM_PROMPT]", "<|system|>"),
    "user": ("<|user|>",),
    "assistant": ("<|assistant|>",),
}
ROLE_BY_STRING: dict[str, str] = {s: role for role, spellings in KNOWN_SPELLINGS.items() for s in spellings}

# Where a role has no counterpart, the next role in its chain is the closest stand-in: a model trained without a
# bos token started documents after its end-of-text separator, so that separator is the best bos it has.
ROLE_FALLBACKS: dict[str, tuple[str, ...]] = {
    "bos": ("bos", "eos"),
    "eos": ("eos", "turn_end"),
    "pad": ("pad", "eos"),
    "unk": ("unk",),
    "turn_start": ("turn_start", "bos"),
    "turn_end": ("turn_end", "eos"),
}
DECLARED_ROLES = ("bos", "eos", "pad", "unk")


def roles_of_tokenizer(tokenizer: Any, tokens: list[str | None], special_ids: set[int]) -> dict[str, tuple[int, ...]]:
    """Role -> special ids, by known spelling first and declared attribute second (keys `declared:<role>`)."""
    roles: dict[str, list[int]] = {}
    for token_id in sorted(special_ids):
        token = tokens[token_id] if token_id < len(tokens) else None
        if token is not None and token in ROLE_BY_STRING:
            roles.setdefault(ROLE_BY_STRING[token], []).append(token_id)
    for role in DECLARED_ROLES:
        declared = getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(declared, int) and 0 <= declared < len(tokens):
            roles.setdefault(f"declared:{role}", []).append(declared)
    return {role: tuple(ids) for role, ids in roles.items()}


def role_candidates(role_map: dict[str, tuple[int, ...]], roles: list[str]) -> list[tuple[str, int]]:
    """Ordered (how, id) candidates for a token with `roles`: known spellings along each fallback chain, then declared.

    `how` names the role that matched, e.g. "eos" or "declared:bos", for the report.
    """
    order: list[str] = []
    for role in roles:
        for candidate in ROLE_FALLBACKS.get(role, (role,)):
            if candidate not in order:
                order.append(candidate)
    found: list[tuple[str, int]] = []
    for role in order:
        found += [(role, i) for i in role_map.get(role, ())]
    for role in order:
        found += [(f"declared:{role}", i) for i in role_map.get(f"declared:{role}", ())]
    return found
