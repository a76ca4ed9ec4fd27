"""The dataset registry and what every dataset is: in-memory tensors, images float32 in [0, 1], NCHW; labels int64.

Every dataset is a registered loader `load(cfg: DataConfig) -> TensorData`; splits are fixed and seeded,
independent of the job seed, so every job of a suite sees the same train/test split. The loaders live in their
own modules (datasets_digits.py, datasets_torchvision.py, datasets_user.py); data.py loads a suite's data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..core.errors import KdbenchError
from ..core.registry import Registry

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
    train_subset: int = 0  # 0: the whole training split; n: a fixed, seeded subset of n examples
    test_subset: int = 0
    sha256: str = ""  # fingerprint of a user's npz/folder data, filled in by the suite loader

    def __post_init__(self):
        from .augment import AUGMENTATIONS

        for name in self.augment:
            AUGMENTATIONS.check(name)
        for key in ("train_subset", "test_subset"):
            if getattr(self, key) < 0:
                raise KdbenchError(f"data.{key} must be >= 0 (0 = all), got {getattr(self, key)!r}")


def config_dict(cfg: DataConfig) -> dict:
    """The data config as it enters job and teacher configs (identity.digest makes their ids)."""
    return dataclasses.asdict(cfg)


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
    test_index: torch.Tensor | None = None  # positions of x_test in the dataset's full test split (subsets)
    full_test_size: int = 0  # size of the full test split (0: x_test is the full split)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> TensorData:
        return dataclasses.replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                                   x_test=self.x_test.to(device), y_test=self.y_test.to(device))


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
