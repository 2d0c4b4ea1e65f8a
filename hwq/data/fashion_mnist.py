"""Fashion-MNIST from the standard idx gz files (Xiao, Rasul, Vollgraf 2017).

The files are looked up in, in order: the directory the caller names, ``$HWQ_FASHION_MNIST``,
and the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
Images come back as ``uint8`` arrays of shape ``(N, 1, 28, 28)``: the integer input pipeline
quantizes them with scale 1/255 and zero point 0, which is lossless.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwq.errors import DataError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
# idx magic numbers: 0x00000803 = unsigned byte, 3 dims; 0x00000801 = unsigned byte, 1 dim.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x803, 0x801
HOW_TO_GET = ("install the Debian package with 'apt-get install dataset-fashion-mnist', or download the "
              "four idx .gz files of Fashion-MNIST into a directory and pass it (--data-dir or $HWQ_FASHION_MNIST)")


@dataclass(frozen=True)
class FashionMNIST:
    """One split: ``images`` uint8 (N, 1, 28, 28), ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> "FashionMNIST":
        """A random subset of ``n`` examples (all of them if ``n >= len(self)``), reproducible by ``seed``."""
        return self if n >= len(self) else self.split(n, seed)[0]

    def split(self, n: int, seed: int = 0) -> tuple:
        """(``subset(n, seed)``, the examples it left out): two disjoint sets, e.g. images to tune on
        and images to score on."""
        idx = np.random.default_rng(seed).permutation(len(self))
        return (FashionMNIST(self.images[idx[:n]], self.labels[idx[:n]]),
                FashionMNIST(self.images[idx[n:]], self.labels[idx[n:]]))


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else the first of ``$HWQ_FASHION_MNIST`` and the Debian package's directory
    holding the four Fashion-MNIST files; raises DataError saying how to get them."""
    needed = [f for img, lab, _ in _FILES.values() for f in (img, lab)]
    if data_dir is not None:   # a directory the user names is the only place looked at
        missing = [f for f in needed if not (Path(data_dir) / f).is_file()]
        if missing:
            raise DataError(f"Fashion-MNIST directory {str(data_dir)!r} lacks {missing}; {HOW_TO_GET}")
        return Path(data_dir)
    candidates = [Path(d) for d in (os.environ.get("HWQ_FASHION_MNIST"),) if d] + [DEBIAN_DIR]
    for d in candidates:
        if all((d / f).is_file() for f in needed):
            return d
    raise DataError(f"Fashion-MNIST not found in {[str(c) for c in candidates]}; {HOW_TO_GET}")


def _read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {str(path)!r} as gzip ({e}); {HOW_TO_GET}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(f"{str(path)!r} is not an idx file of magic {magic:#x}; {HOW_TO_GET}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if dims[0] != count or len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{str(path)!r} holds dims {dims} and {len(raw) - header} bytes, expected {count} items; "
                        f"the file is truncated or of another data set")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(split: str = "test", data_dir: str | os.PathLike | None = None) -> FashionMNIST:
    """Load one split of Fashion-MNIST.

    Args:
        split: ``"train"`` (60 000 images) or ``"test"`` (10 000).
        data_dir: a directory with the idx gz files; default: ``$HWQ_FASHION_MNIST``, then the Debian package.

    Example:
        >>> test = load_fashion_mnist("test")
        >>> test.images.shape, test.images.dtype
        ((10000, 1, 28, 28), dtype('uint8'))
    """
    if split not in _FILES:
        raise DataError(f"unknown split {split!r}; valid: 'test', 'train'")
    d = find_data_dir(data_dir)
    img_file, lab_file, count = _FILES[split]
    images = _read_idx(d / img_file, _IMAGES_MAGIC, count)
    labels = _read_idx(d / lab_file, _LABELS_MAGIC, count)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{str(d / img_file)!r} has images of shape {images.shape[1:]}, expected (28, 28)")
    if labels.max() >= len(CLASSES):
        raise DataError(f"{str(d / lab_file)!r} has label {int(labels.max())}, expected 0..9")
    return FashionMNIST(images.reshape(count, 1, 28, 28), labels.astype(np.int64))
