"""Data sets hwq ships loaders for (numpy only: usable by the pure layers and by torch code alike)."""

from hwq.data.fashion_mnist import CLASSES, FashionMNIST, load_fashion_mnist

__all__ = ["CLASSES", "FashionMNIST", "load_fashion_mnist"]
