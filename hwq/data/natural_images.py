"""Natural-image crops for ImageNet models, from the photographs scikit-image ships.

No ImageNet data can be bundled, so ImageNet-model benchmarks measure agreement with the float
model on random crops (scale, aspect ratio, flip) of the RGB photographs in ``skimage.data``
(an astronaut, a cat, coffee, a rocket, motorcycles, a galaxy field, ...), resized to 224x224 and
normalized with ImageNet's mean and std: natural statistics, not a labelled test set.
"""

from __future__ import annotations

import numpy as np

from hwq.errors import DataError

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field", "retina",
          "immunohistochemistry", "colorwheel")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def natural_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` normalized float32 crops (N, 3, size, size) of skimage's RGB photographs."""
    try:
        import skimage.data as sk
    except ImportError:
        raise DataError("natural_crops needs scikit-image ('pip install scikit-image', or "
                        "'pip install -e .[bench]')") from None
    import torch
    import torch.nn.functional as F

    photos = []
    for name in PHOTOS:
        try:
            imgs = getattr(sk, name)()
        except Exception:  # noqa: BLE001  (a photo this scikit-image version lacks or would download)
            continue
        for img in imgs[:2] if isinstance(imgs, tuple) else (imgs,):   # stereo_motorcycle: left, right
            if img.ndim == 3 and img.shape[2] >= 3:
                photos.append(torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float() / 255)
    if len(photos) < 3:
        raise DataError(f"scikit-image provided only {len(photos)} RGB photographs of {PHOTOS}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        img = photos[rng.integers(len(photos))]
        _, h, w = img.shape
        area = h * w * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, round(np.sqrt(area / ratio))))
        cw = int(min(w, round(np.sqrt(area * ratio))))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[:, y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop.flip(2)
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        out[k] = (crop.numpy() - MEAN[:, None, None]) / STD[:, None, None]
    return out
