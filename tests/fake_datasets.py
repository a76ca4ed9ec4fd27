"""Small generated files in the exact layouts the real datasets ship in, so the loaders run offline:
torchvision's MNIST idx files, its CIFAR python pickle batches, CIFAR-10-C .npy files, .npz files and
ImageFolder trees of PNGs. Images are random with a class-dependent brightness, so a model can learn a little."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def images(n: int, shape: tuple[int, ...], labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 96, size=(n, *shape))
    level = (labels * (160 // max(num_classes - 1, 1))).reshape(-1, *([1] * len(shape)))
    return np.clip(base + level, 0, 255).astype(np.uint8)


def labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return (np.arange(n) + seed) % num_classes


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of MNIST: magic (0, 0, 0x08 = ubyte, ndim), big-endian int32 dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 300, n_test: int = 150) -> dict:
    """`root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` as torchvision expects them."""
    raw = Path(root) / folder / "raw"
    out = {}
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        y = labels(n, 10, seed)
        x = images(n, (28, 28), y, 10, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        out[split] = (x, y)
    return out


def write_cifar(root: Path, num_classes: int = 10, per_batch: int = 10, n_test: int = 20) -> dict:
    """torchvision's CIFAR layout: python pickles of {"data": uint8 (N, 3072), "labels" | "fine_labels": [...]}.
    The files cannot match the released checksums: tests patch torchvision's integrity check."""
    if num_classes == 10:
        folder, train_files, test_file, meta, key, label_key = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
            "label_names", "labels")
    else:
        folder, train_files, test_file, meta, key, label_key = (
            "cifar-100-python", ["train"], "test", "meta", "fine_label_names", "fine_labels")
    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    out = {"train": [], "test": None}
    for i, name in enumerate(train_files + [test_file]):
        n = n_test if name == test_file else per_batch * (5 if num_classes == 100 else 1)
        y = labels(n, num_classes, i)
        x = images(n, (3, 32, 32), y, num_classes, i)
        with open(base / name, "wb") as f:
            pickle.dump({"data": x.reshape(n, -1), label_key: y.tolist()}, f)
        if name == test_file:
            out["test"] = (x, y)
        else:
            out["train"].append((x, y))
    with open(base / meta, "wb") as f:
        pickle.dump({key: [f"class{i}" for i in range(num_classes)]}, f)
    return out


def write_cifar_c(folder: Path, test_x: np.ndarray, test_y: np.ndarray, names=("gaussian_noise", "fog")) -> Path:
    """CIFAR-10-C's layout: `<name>.npy` uint8 (5 x N, 32, 32, 3), severities 1..5 in order, and labels.npy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nhwc = test_x.transpose(0, 2, 3, 1)
    rng = np.random.default_rng(0)
    for name in names:
        blocks = [np.clip(nhwc.astype(int) + rng.integers(-8 * s, 8 * s + 1, nhwc.shape), 0, 255) for s in range(1, 6)]
        np.save(folder / f"{name}.npy", np.concatenate(blocks).astype(np.uint8))
    np.save(folder / "labels.npy", np.tile(test_y, 5).astype(np.int64))
    return folder


def patch_cifar_checksums(monkeypatch) -> None:
    """Generated CIFAR files cannot have the released MD5s: accept any existing file."""
    import os

    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def write_png_folder(root: Path, classes=("cat", "dog", "eel"), per_class=(4, 2), size=(12, 10), mode="L") -> Path:
    """An ImageFolder tree: root/{train,test}/<class>/<i>.png."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            d = Path(root) / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(d / f"{i}.png")
    return Path(root)
