"""hwq's model zoo (torch): small models whose graphs the integer lowering supports end to end."""

from hwq.models.rescnn import ResCNN
from hwq.models.train import TrainConfig, evaluate, load_or_train, train_float

__all__ = ["ResCNN", "TrainConfig", "evaluate", "load_or_train", "train_float"]
