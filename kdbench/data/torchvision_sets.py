"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through torchvision, with their standard train/test splits.

The files are read from the data folder (`DataConfig.data_dir`, resolved by `data.load_data`): torchvision's
own layout, `<dir>/MNIST/raw/*-ubyte`, `<dir>/FashionMNIST/raw/*-ubyte`, `<dir>/cifar-10-batches-py/` and
`<dir>/cifar-100-python/`. Nothing is downloaded unless `download` is set (`--download`); missing files are a
one-line error naming the folder and the flag. Whole splits are read at once from torchvision's decoded
arrays (no per-image PIL round trip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import KdbenchError
from .registry import DATASETS, DataConfig, TensorData, make_tensor_data


@dataclass(frozen=True)
class TorchvisionSet:
    cls_name: str  # the torchvision.datasets class
    num_classes: int
    shape: tuple[int, int, int]
    n_train: int
    n_test: int

    def dataset_class(self):
        import torchvision.datasets

        return getattr(torchvision.datasets, self.cls_name)

    def folder(self, root: Path) -> Path:
        cls = self.dataset_class()
        return root / cls.base_folder if hasattr(cls, "base_folder") else root / self.cls_name / "raw"

    def required_files(self, root: Path) -> list[Path]:
        cls = self.dataset_class()
        if hasattr(cls, "base_folder"):  # CIFAR: python pickle batches and the meta file
            names = [name for name, _md5 in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        else:  # MNIST family: the decompressed idx files
            names = [Path(url).name.removesuffix(".gz") for url, _md5 in cls.resources]
        return [self.folder(root) / name for name in names]


SETS = {
    "mnist": TorchvisionSet("MNIST", 10, (1, 28, 28), 60000, 10000),
    "fashion-mnist": TorchvisionSet("FashionMNIST", 10, (1, 28, 28), 60000, 10000),
    "cifar10": TorchvisionSet("CIFAR10", 10, (3, 32, 32), 50000, 10000),
    "cifar100": TorchvisionSet("CIFAR100", 100, (3, 32, 32), 50000, 10000),
}


def missing_files(name: str, root: Path) -> list[Path]:
    return [p for p in SETS[name].required_files(root) if not p.is_file()]


def check_available(name: str, root: Path, download: bool) -> None:
    """Raise the one-line 'not found' error when the files are missing and may not be downloaded."""
    if download:
        return
    missing = missing_files(name, root)
    if missing:
        folder = SETS[name].folder(root)
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise KdbenchError(f"dataset {name!r} is not in {str(folder)!r} (missing {missing[0].name}{more}): run "
                           f"with --download to fetch it, or point --data-dir (or $KDBENCH_DATA) at a folder "
                           f"that holds it")


def download(name: str, root: Path) -> None:
    """Fetch the dataset's files into `root` now (a no-op when they are there): a failure is one error for
    the whole run, not one per job."""
    cls = SETS[name].dataset_class()
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - no network, HTTP error, bad archive
        raise KdbenchError(f"could not download {name!r} into {str(root)!r}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _images(data) -> torch.Tensor:
    """uint8 NHW (MNIST, a tensor) or NHWC (CIFAR, an array) -> float NCHW in [0, 1]."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def load_torchvision(name: str, cfg: DataConfig) -> TensorData:
    spec = SETS[name]
    root = Path(cfg.data_dir)
    check_available(name, root, cfg.download)
    cls = spec.dataset_class()
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise KdbenchError(f"dataset {name!r} in {str(spec.folder(root))!r} is incomplete or corrupted "
                           f"({str(e).splitlines()[0]}): run with --download to fetch it again") from None
    except Exception as e:
        if not cfg.download:
            raise
        raise KdbenchError(f"could not download {name!r} into {str(root)!r}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    x_tr, x_te = _images(train.data), _images(test.data)
    y_tr, y_te = torch.as_tensor(train.targets).long(), torch.as_tensor(test.targets).long()
    if tuple(x_tr.shape[1:]) != spec.shape or len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise KdbenchError(f"dataset {name!r} in {str(spec.folder(root))!r} has images of shape "
                           f"{tuple(x_tr.shape[1:])}, expected {spec.shape}")
    return make_tensor_data(name, x_tr, y_tr, x_te, y_te, spec.num_classes)


def _register(name: str, summary: str) -> None:
    DATASETS.add(name, lambda cfg: load_torchvision(name, cfg), summary)


_register("mnist", "MNIST (torchvision), 60k/10k 28x28 grey digits, 10 classes; --download to fetch")
_register("fashion-mnist", "Fashion-MNIST (torchvision), 60k/10k 28x28 grey images, 10 classes; --download to fetch")
_register("cifar10", "CIFAR-10 (torchvision), 50k/10k 32x32 colour images, 10 classes; --download to fetch")
_register("cifar100", "CIFAR-100 (torchvision), 50k/10k 32x32 colour images, 100 classes; --download to fetch")
