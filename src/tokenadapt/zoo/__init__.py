"""Built-in artifacts and the user cache: fetch, verify, convert, and resolve what the user names.

>>> from tokenadapt.zoo import list_artifacts, resolve_model
>>> [a.name for a in list_artifacts() if a.kind == "embedder"]
['minilm']
"""

from tokenadapt.zoo.artifacts import (
    BUILTIN_EMBEDDERS,
    BUILTIN_MODELS,
    BUILTIN_TOKENIZERS,
    ArtifactStatus,
    EmbedderArtifact,
    ModelArtifact,
    TokenizerArtifact,
    builtin_names,
    list_artifacts,
)
from tokenadapt.zoo.cache import cache_path, cache_root
from tokenadapt.zoo.fetch import (
    AssembledFile,
    PackagedDirectory,
    PackagedFile,
    fetch_assembled_file,
    fetch_packaged_directory,
    fetch_packaged_file,
)
from tokenadapt.zoo.models import ResolvedModel, resolve_embedder, resolve_model

__all__ = [
    "BUILTIN_EMBEDDERS",
    "BUILTIN_MODELS",
    "BUILTIN_TOKENIZERS",
    "ArtifactStatus",
    "AssembledFile",
    "EmbedderArtifact",
    "ModelArtifact",
    "PackagedDirectory",
    "PackagedFile",
    "ResolvedModel",
    "TokenizerArtifact",
    "builtin_names",
    "cache_path",
    "cache_root",
    "fetch_assembled_file",
    "fetch_packaged_directory",
    "fetch_packaged_file",
    "list_artifacts",
    "resolve_embedder",
    "resolve_model",
]
