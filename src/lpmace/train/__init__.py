"""Training: `Trainer(load_train_config(path, overrides)).run()`; CLI `lpmace train`."""

from lpmace.train.config import TrainConfig, load_train_config
from lpmace.train.trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_train_config"]
