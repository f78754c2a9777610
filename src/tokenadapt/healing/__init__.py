"""Heal a transplanted model: train the embedding rows the transplant estimated, with the body frozen."""

from tokenadapt.healing.trainer import HEAL_REPORT, HealResult, heal

__all__ = ["HEAL_REPORT", "HealResult", "heal"]
