"""Datasets as in-memory tensors: images float32 in [0, 1], NCHW; labels int64.

Datasets live whole on the training device and batches are index slices (no DataLoader workers).
Every dataset is a registered loader `load(cfg: DataConfig) -> TensorData`; splits are fixed and seeded,
independent of the job seed, so every job of a suite sees the same train/test split.

- `digits`: scikit-learn's bundled 8x8 digits, a seeded stratified split (`test_fraction`).
- `mnist`, `fashion-mnist`, `cifar10`, `cifar100`: torchvision's files and standard train/test splits, read
  from the data folder (`--data-dir`, else the suite's `data_dir`, else `$KDBENCH_DATA`, else
  `~/.cache/kdbench/data`); `--download` fetches them. Loaders in `datasets_torchvision.py`.
- `npz:PATH` and `folder:PATH`: your own data (see `datasets_user.py`). A relative PATH is relative to the
  suite file's folder; the suite loader makes it absolute and records a fingerprint of the content
  (`sha256`), so changed data gets new job ids and never meets a stale cached teacher.
- `train_subset` / `test_subset` (0 = all) keep a fixed, seeded subset of each split (smoke suites).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

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


# fields added after the first release: left out of a job's config (and so of its id) at their defaults, so
# the ids of existing jobs (and their records and cached teachers) do not change
LATER_FIELDS = {"train_subset": 0, "test_subset": 0, "sha256": ""}


def config_dict(cfg: DataConfig) -> dict:
    """The data config as it enters job ids and teacher cache keys."""
    d = dataclasses.asdict(cfg)
    return {k: v for k, v in d.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


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


@DATASETS.register("digits", "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download")
def load_digits(cfg: DataConfig) -> TensorData:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(bunch.target, dtype=torch.long)
    tr, te = stratified_split(y, cfg.test_fraction)
    return make_tensor_data("digits", x[tr], y[tr], x[te], y[te], 10)


DATA_ENV = "KDBENCH_DATA"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "kdbench" / "data").expanduser()


def data_root(cfg: DataConfig, root: str | Path | None = None) -> Path:
    """Where torchvision datasets live: `root` (the CLI's --data-dir), the suite's data_dir, $KDBENCH_DATA,
    or ~/.cache/kdbench/data."""
    if root is not None:
        return Path(root).expanduser()
    return Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()


def user_loader(name: str):
    """(loader, path) of a user's `npz:PATH` / `folder:PATH` dataset, else None."""
    kind, sep, path = name.partition(":")
    if not sep:
        return None
    if kind not in datasets_user.KINDS:
        raise KdbenchError(f"unknown dataset {name!r}; a dataset of your own is npz:PATH or folder:PATH")
    return datasets_user.KINDS[kind], path


def resolve_data_config(cfg: DataConfig, base_dir: str | Path | None = None) -> DataConfig:
    """Validate a suite's data config; make a user dataset's path absolute (relative to `base_dir`, the suite
    file's folder) and fingerprint its content into `sha256`."""
    found = user_loader(cfg.name)
    if found is None:
        DATASETS.check(cfg.name)
        return cfg
    _, path = found
    kind = cfg.name.split(":", 1)[0]
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or Path.cwd()) / p
    p = p.resolve()
    return dataclasses.replace(cfg, name=f"{kind}:{p}", sha256=datasets_user.fingerprint(kind, p))


def subset_index(n_total: int, n: int, what: str, seed: int = SPLIT_SEED) -> torch.Tensor | None:
    """A fixed, seeded subset of n of n_total positions (sorted), or None for all."""
    if n == 0 or n == n_total:
        return None
    if n > n_total:
        raise KdbenchError(f"data.{what}_subset = {n} is larger than the {what} split ({n_total} examples)")
    g = torch.Generator().manual_seed(seed + (1 if what == "test" else 0))
    return torch.randperm(n_total, generator=g)[:n].sort().values


def load_data(cfg: DataConfig, root: str | Path | None = None, download: bool | None = None) -> TensorData:
    """The dataset of `cfg`. `root` and `download` (the CLI's --data-dir / --download) override the suite's."""
    run_cfg = dataclasses.replace(cfg, data_dir=str(data_root(cfg, root)),
                                  download=bool(download) or cfg.download)
    found = user_loader(cfg.name)
    if found is not None:
        loader, path = found
        kind = cfg.name.split(":", 1)[0]
        if cfg.sha256:
            now = datasets_user.fingerprint(kind, Path(path))
            if now != cfg.sha256:
                raise KdbenchError(f"{cfg.name} changed since its jobs were defined (fingerprint {now[:12]}, "
                                   f"expected {cfg.sha256[:12]}): load the suite again")
        data = loader(Path(path), cfg.name)
    else:
        data = DATASETS.get(cfg.name)(run_cfg)
    tr = subset_index(len(data.x_train), cfg.train_subset, "train")
    te = subset_index(len(data.x_test), cfg.test_subset, "test")
    if tr is None and te is None:
        return data
    x_tr, y_tr = (data.x_train, data.y_train) if tr is None else (data.x_train[tr], data.y_train[tr])
    x_te, y_te = (data.x_test, data.y_test) if te is None else (data.x_test[te], data.y_test[te])
    sub = make_tensor_data(data.name, x_tr, y_tr, x_te, y_te, data.num_classes)
    return dataclasses.replace(sub, test_index=te, full_test_size=len(data.x_test) if te is not None else 0)


# explicit imports: the real-scale loaders register themselves in DATASETS
from . import (
    datasets_torchvision,  # noqa: F401
    datasets_user,
)
