"""Scoring models on text (bits per byte, perplexity, compression) and comparing them with a reference."""

from tokenadapt.evaluation.evaluator import EvalResult, evaluate
from tokenadapt.evaluation.excess import DiagnoseResult, diagnose
from tokenadapt.evaluation.scoring import TextScore, score_text

__all__ = ["DiagnoseResult", "EvalResult", "TextScore", "diagnose", "evaluate", "score_text"]
