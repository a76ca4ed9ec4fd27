"""Datasets as in-memory tensors: images float32 in [0, 1], NCHW; labels int64.

Small datasets live whole on the training device and batches are index slices (no DataLoader workers).
Every dataset is a registered loader `load(cfg: DataConfig) -> TensorData`; splits are fixed and seeded,
independent of the job seed, so every job of a suite sees the same train/test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import KdbenchError
from .registry import Registry

DATASETS: Registry = Registry("dataset")

SPLIT_SEED = 0  # fixed: the train/test split never depends on the job seed


@dataclass(frozen=True)
class DataConfig:
    """What a suite says about its data. `name` is a registered dataset."""

    name: str = "digits"
    test_fraction: float = 0.2
    data_dir: str | None = None
    download: bool = False
    augment: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class TensorData:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                          self.y_test.to(device), self.num_classes, self.mean, self.std)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of NCHW images (used by the Normalize layer inside each model)."""
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def stratified_split(y: torch.Tensor, test_fraction: float, seed: int = SPLIT_SEED):
    """Indices (train, test) with each class split in the same proportion; deterministic for a seed."""
    if not 0.0 < test_fraction < 1.0:
        raise KdbenchError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def make_tensor_data(name: str, x_train, y_train, x_test, y_test, num_classes: int) -> TensorData:
    mean, std = channel_stats(x_train)
    return TensorData(name, x_train.float().contiguous(), y_train.long(), x_test.float().contiguous(),
                      y_test.long(), num_classes, mean, std)


@DATASETS.register("digits", "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download")
def load_digits(cfg: DataConfig) -> TensorData:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    tr, te = stratified_split(y, cfg.test_fraction)
    return make_tensor_data("digits", x[tr], y[tr], x[te], y[te], 10)


def load_data(cfg: DataConfig) -> TensorData:
    return DATASETS.get(cfg.name)(cfg)
