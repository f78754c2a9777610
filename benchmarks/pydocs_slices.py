"""Which Python docs pages make the official TokenAdapt run's slice: tokens per byte of candidate 20 KB slices.

anchors.md gives the official slice's tokens per byte with SmolLM2's tokenizer (0.236) and Qwen2's (0.219). This
prints both for the whole docs in name order, for each top-level folder, and for every run of pages in name order
that matches both within 0.003, so the choice in `official_slices.py` (the tutorial) can be checked. No model is
loaded; about a minute on 2 cores.

    python benchmarks/pydocs_slices.py
"""

from __future__ import annotations

from official_slices import SLICE_BYTES

from tokenadapt.tokenizer_io import load_tokenizer
from tokenadapt.zoo.texts import load_text

OFFICIAL = (0.236, 0.219)  # anchors.md: tokens per byte, SmolLM2 -> Qwen2 tokenizers
TOLERANCE = 0.003


def main() -> None:
    old, new = load_tokenizer("smollm2-135m"), load_tokenizer("qwen2")
    corpus = load_text("pydocs-en", split="all")
    pages = list(zip(corpus.doc_ids, corpus.documents, strict=True))

    def rates(documents: list[str]) -> tuple[float, float]:
        text = "\n\n".join(documents).encode("utf-8")[:SLICE_BYTES].decode("utf-8", errors="ignore")
        size = len(text.encode("utf-8"))
        return tuple(round(len(t(text)["input_ids"]) / size, 3) for t in (old, new))  # type: ignore[return-value]

    print(f"official slice: {OFFICIAL}")
    print(f"whole docs in name order: {rates([d for _, d in pages])}")
    for folder in sorted({i.split("/")[0] for i, _ in pages if "/" in i}):
        print(f"{folder}/: {rates([d for i, d in pages if i.startswith(folder + '/')])}")
    for start, (page, _) in enumerate(pages):
        found = rates([d for _, d in pages[start : start + 40]])
        if all(abs(a - b) <= TOLERANCE for a, b in zip(found, OFFICIAL, strict=True)):
            print(f"run from {page}: {found}")


if __name__ == "__main__":
    main()
