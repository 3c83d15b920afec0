"""Pretraining Gemma 3 on stories: data preparation, the training loop, checkpoints and run management."""

from .config import TRAIN_PRESETS, TrainConfig
from .trainer import train

__all__ = ["TrainConfig", "TRAIN_PRESETS", "train"]
