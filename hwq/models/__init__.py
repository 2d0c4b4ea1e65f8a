"""hwq's model zoo (torch): small models whose graphs the integer lowering supports end to end."""

from hwq.models.rescnn import ResCNN
from hwq.models.resnet20 import ResNet20
from hwq.models.train import TrainConfig, evaluate, load_or_train, train_float

__all__ = ["ResCNN", "ResNet20", "TrainConfig", "evaluate", "load_or_train", "train_float"]
