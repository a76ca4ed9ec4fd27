"""Datasets as in-memory tensors: images float32 in [0, 1], NCHW; labels int64.

Datasets live whole on the training device and batches are index slices (no DataLoader workers).
Every dataset is a registered loader `load(cfg: DataConfig) -> TensorData`; splits are fixed and seeded,
independent of the job seed, so every job of a suite sees the same train/test split.

- `digits`: scikit-learn's bundled 8x8 digits, a seeded stratified split (`test_fraction`).
- `mnist`, `fashion-mnist`, `cifar10`, `cifar100`: torchvision's files and standard train/test splits, read
  from the data folder (`--data-dir`, else the suite's `data_dir`, else `$KDBENCH_DATA`, else
  `~/.cache/kdbench/data`); `--download` fetches them. Loaders in `datasets_torchvision.py`.
- `npz:PATH` and `folder:PATH`: your own data (see `user.py`). A relative PATH is relative to the
  suite file's folder; the suite loader makes it absolute and records a fingerprint of the content
  (`sha256`), so changed data gets new job ids and never meets a stale cached teacher.
- `train_subset` / `test_subset` (0 = all) keep a fixed, seeded subset of each split (smoke suites).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..core.errors import KdbenchError
from . import user
from .registry import DATASETS, SPLIT_SEED, DataConfig, TensorData, make_tensor_data

DATA_ENV = "KDBENCH_DATA"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "kdbench" / "data").expanduser()


def data_root(cfg: DataConfig, root: str | Path | None = None) -> Path:
    """Where torchvision datasets live: `root` (the CLI's --data-dir), the suite's data_dir, $KDBENCH_DATA,
    or ~/.cache/kdbench/data."""
    if root is not None:
        return Path(root).expanduser()
    return Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()


def user_path(name: str) -> Path | None:
    """The PATH of a user's `npz:PATH` / `folder:PATH` dataset, else None."""
    kind, sep, path = name.partition(":")
    if not sep:
        return None
    if kind not in user.KINDS:
        raise KdbenchError(f"unknown dataset {name!r}; a dataset of your own is npz:PATH or folder:PATH")
    return Path(path)


def resolve_data_config(cfg: DataConfig, base_dir: str | Path | None = None) -> DataConfig:
    """Validate a suite's data config; make a user dataset's path absolute (relative to `base_dir`, the suite
    file's folder) and fingerprint its content into `sha256`."""
    path = user_path(cfg.name)
    if path is None:
        DATASETS.check(cfg.name)
        return cfg
    kind = cfg.name.split(":", 1)[0]
    p = path.expanduser()
    if not p.is_absolute():
        p = Path(base_dir or Path.cwd()) / p
    p = p.resolve()
    return dataclasses.replace(cfg, name=f"{kind}:{p}", sha256=user.fingerprint(kind, p))


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
    path = user_path(cfg.name)
    if path is not None and cfg.sha256:
        kind = cfg.name.split(":", 1)[0]
        now = user.fingerprint(kind, path)
        if now != cfg.sha256:
            raise KdbenchError(f"{cfg.name} changed since its jobs were defined (fingerprint {now[:12]}, "
                               f"expected {cfg.sha256[:12]}): load the suite again")
    data = DATASETS.get(user.entry_name(cfg.name))(run_cfg)
    tr = subset_index(len(data.x_train), cfg.train_subset, "train")
    te = subset_index(len(data.x_test), cfg.test_subset, "test")
    if tr is None and te is None:
        return data
    x_tr, y_tr = (data.x_train, data.y_train) if tr is None else (data.x_train[tr], data.y_train[tr])
    x_te, y_te = (data.x_test, data.y_test) if te is None else (data.x_test[te], data.y_test[te])
    sub = make_tensor_data(data.name, x_tr, y_tr, x_te, y_te, data.num_classes)
    return dataclasses.replace(sub, test_index=te, full_test_size=len(data.x_test) if te is not None else 0)


def image_shape(cfg: DataConfig) -> tuple[int, ...]:
    """(C, H, W) of the dataset's images: a torchvision set's is known without its files; other datasets are read."""
    from .torchvision_sets import SETS

    if cfg.name in SETS:
        return tuple(SETS[cfg.name].shape)
    if cfg.name.startswith("npz:"):
        import numpy as np

        with np.load(user_path(cfg.name), allow_pickle=False) as f:
            dims = f["x_train"].shape[1:]
        return (1, *dims) if len(dims) == 2 else (dims[2], dims[0], dims[1]) if dims[2] <= 4 else tuple(dims)
    return tuple(load_data(cfg).shape)
