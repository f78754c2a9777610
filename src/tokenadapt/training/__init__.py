"""Learn tokenizers: regex BPE (the control), the paper's supertokens, and two-stage SuperBPE."""

from tokenadapt.training.modes import MODES, get_mode, mode_names
from tokenadapt.training.trainer import TrainingResult, train_tokenizer

__all__ = ["MODES", "TrainingResult", "get_mode", "mode_names", "train_tokenizer"]
