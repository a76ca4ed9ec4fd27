"""`digits`: scikit-learn's bundled 8x8 digits, a seeded stratified split (`DataConfig.test_fraction`)."""

from __future__ import annotations

import torch

from .registry import DATASETS, DataConfig, TensorData, make_tensor_data, stratified_split


@DATASETS.register("digits", "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download")
def load_digits(cfg: DataConfig) -> TensorData:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    tr, te = stratified_split(y, cfg.test_fraction)
    return make_tensor_data("digits", x[tr], y[tr], x[te], y[te], 10)
