import gzip
import struct

import numpy as np
import pytest

from hwq.data import load_fashion_mnist
from hwq.data.fashion_mnist import DEBIAN_DIR, _FILES
from hwq.errors import DataError


def _write_split(d, split, n, rng, truncate=False):
    img, lab, _ = _FILES[split]
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    body = images.tobytes()[:-5] if truncate else images.tobytes()
    with gzip.open(d / img, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + body)
    with gzip.open(d / lab, "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return images, labels


@pytest.fixture
def fake_dir(tmp_path, rng, monkeypatch):
    monkeypatch.setattr("hwq.data.fashion_mnist._FILES", {"train": (*_FILES["train"][:2], 12),
                                                           "test": (*_FILES["test"][:2], 7)})
    return tmp_path


def test_loads_idx_files(fake_dir, rng):
    _write_split(fake_dir, "train", 12, rng)
    images, labels = _write_split(fake_dir, "test", 7, rng)
    ds = load_fashion_mnist("test", fake_dir)
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[:, 0], images) and np.array_equal(ds.labels, labels)
    assert len(ds.subset(3)) == 3
    first, rest = ds.split(3, seed=5)        # disjoint, together every example, the first part is subset()
    assert np.array_equal(first.labels, ds.subset(3, seed=5).labels) and len(rest) == 4
    both = np.concatenate([first.images, rest.images]).reshape(7, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, ds.images.reshape(7, -1)))


def test_truncated_file_is_a_clear_error(fake_dir, rng):
    _write_split(fake_dir, "train", 12, rng)
    _write_split(fake_dir, "test", 7, rng, truncate=True)
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist("test", fake_dir)


def test_missing_directory_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path)


def test_bad_split():
    with pytest.raises(DataError, match="'train'"):
        load_fashion_mnist("validation")


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_test_split():
    ds = load_fashion_mnist("test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.labels).tolist() == [1000] * 10
