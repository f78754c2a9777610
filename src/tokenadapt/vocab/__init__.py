"""Vocabularies as canonical bytes, special-token roles, and the alignment of a new vocabulary to an old one."""

from tokenadapt.vocab.alignment import Alignment, Assignment, MatchMode, SpecialMatch, align_vocabularies
from tokenadapt.vocab.canonical import Family, Vocabulary, build_vocabulary, canonical_bytes, detect_family
from tokenadapt.vocab.decompose import Decomposition, decompose

__all__ = [
    "Alignment",
    "Assignment",
    "Decomposition",
    "Family",
    "MatchMode",
    "SpecialMatch",
    "Vocabulary",
    "align_vocabularies",
    "build_vocabulary",
    "canonical_bytes",
    "decompose",
    "detect_family",
]
