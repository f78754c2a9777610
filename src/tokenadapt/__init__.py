"""tokenadapt: move a pretrained language model onto a new tokenizer, zero-shot, and measure what it costs.

    >>> import tokenadapt
    >>> result = tokenadapt.transplant("smollm2-135m", "llama3", "out/smollm2-llama3")
    >>> tokenadapt.evaluate("out/smollm2-llama3", ["wiki-en"], reference="smollm2-135m").to_markdown()

The public names below are imported on first use, so `import tokenadapt` (and the CLI's start) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "TokenAdaptError": "tokenadapt.errors",
    "DiagnoseResult": "tokenadapt.evaluation",
    "EvalResult": "tokenadapt.evaluation",
    "TextScore": "tokenadapt.evaluation",
    "diagnose": "tokenadapt.evaluation",
    "evaluate": "tokenadapt.evaluation",
    "score_text": "tokenadapt.evaluation",
    "METHODS": "tokenadapt.methods",
    "get_method": "tokenadapt.methods",
    "method_names": "tokenadapt.methods",
    "EvalOptions": "tokenadapt.options",
    "TransplantOptions": "tokenadapt.options",
    "load_tokenizer": "tokenadapt.tokenizer_io",
    "TransplantResult": "tokenadapt.transplant",
    "transplant": "tokenadapt.transplant",
    "align_vocabularies": "tokenadapt.vocab",
    "build_vocabulary": "tokenadapt.vocab",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # explicit re-exports for type checkers and IDEs
    from tokenadapt.errors import TokenAdaptError as TokenAdaptError
    from tokenadapt.evaluation import (
        DiagnoseResult as DiagnoseResult,
    )
    from tokenadapt.evaluation import (
        EvalResult as EvalResult,
    )
    from tokenadapt.evaluation import (
        TextScore as TextScore,
    )
    from tokenadapt.evaluation import (
        diagnose as diagnose,
    )
    from tokenadapt.evaluation import (
        evaluate as evaluate,
    )
    from tokenadapt.evaluation import (
        score_text as score_text,
    )
    from tokenadapt.methods import METHODS as METHODS
    from tokenadapt.methods import get_method as get_method
    from tokenadapt.methods import method_names as method_names
    from tokenadapt.options import EvalOptions as EvalOptions
    from tokenadapt.options import TransplantOptions as TransplantOptions
    from tokenadapt.tokenizer_io import load_tokenizer as load_tokenizer
    from tokenadapt.transplant import TransplantResult as TransplantResult
    from tokenadapt.transplant import transplant as transplant
    from tokenadapt.vocab import align_vocabularies as align_vocabularies
    from tokenadapt.vocab import build_vocabulary as build_vocabulary


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tokenadapt' has no attribute {name!r}")
