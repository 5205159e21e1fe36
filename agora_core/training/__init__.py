"""Training the generator: datasets (FFHQ-style folders, synthetic built-in heads), the
discriminator and the dual-discrimination trainer.

Builds on :mod:`agora_core.render`, :mod:`agora_core.generator`, :mod:`agora_core.heads` and
:mod:`agora_core.types`; independent of :mod:`agora_core.agora_m`.
"""
from agora_core.training.trainer import TrainConfig, TrainingError, open_run, train

__all__ = ["TrainConfig", "TrainingError", "open_run", "train"]
