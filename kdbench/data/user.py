"""Your own data: `npz:PATH` and `folder:PATH` (set as the suite's dataset).

`npz:PATH`: one .npz with the arrays `x_train`, `y_train`, `x_test`, `y_test`. Images are uint8 in 0..255 or
float in [0, 1], laid out NHW (grey), NHWC or NCHW; the layout is detected from which axis has 1-4 channels.
Labels are integers 0..K-1 (K = the largest training label + 1). Anything else is a one-line error naming the
array and the problem: a missing array, a wrong dtype, mismatched lengths, values outside the range, NaN or
infinity, a label out of range, train and test images of different shapes.

`folder:PATH`: torchvision's ImageFolder layout with `train/` and `test/`, one sub-folder per class
(`train/<class>/<image>.png`); classes are the sorted folder names of `train/`. Grey images stay one channel
unless any image is in colour; every image must have the same size.

A dataset is fingerprinted when the suite is loaded (`DataConfig.sha256`): an .npz by the SHA-256 of its
bytes, a folder by the names, sizes and modification times of its files.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..core.errors import KdbenchError
from .registry import DATASETS, DataConfig, TensorData, make_tensor_data

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def fingerprint(kind: str, path: Path) -> str:
    h = hashlib.sha256()
    if kind == "npz":
        if not path.is_file():
            raise KdbenchError(f"npz file {str(path)!r} does not exist")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    _check_folder(path)
    for split in ("train", "test"):
        for p in sorted((path / split).rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ---- npz ---------------------------------------------------------------------------------------------------

def _layout(x: np.ndarray, key: str) -> np.ndarray:
    """NHW / NHWC / NCHW -> NCHW."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise KdbenchError(f"{key} has shape {x.shape}; images must be NHW, NHWC or NCHW")
    _, a, b, c = x.shape
    nhwc, nchw = c <= 4, a <= 4
    if nhwc and nchw:  # tiny images: prefer the reading with square images
        nhwc, nchw = a == b, b == c
    if nhwc == nchw:
        raise KdbenchError(f"cannot tell whether {key} (shape {x.shape}) is NHWC or NCHW: the channel axis must "
                           f"be the only one of size 1-4")
    return x.transpose(0, 3, 1, 2) if nhwc else x


def _images(x: np.ndarray, key: str) -> torch.Tensor:
    if len(x) == 0:
        raise KdbenchError(f"{key} is empty")
    if x.dtype == np.uint8:
        out = torch.from_numpy(np.ascontiguousarray(_layout(x, key))).float().div_(255.0)
        return out
    if not np.issubdtype(x.dtype, np.floating):
        raise KdbenchError(f"{key} has dtype {x.dtype}; images must be uint8 (0-255) or float (0-1)")
    if not np.isfinite(x).all():
        raise KdbenchError(f"{key} contains NaN or infinite values ({int((~np.isfinite(x)).sum())} of them)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (uint8-scale values stored as float? divide by 255 or store uint8)" if hi > 1.0 else ""
        raise KdbenchError(f"{key} has values in [{lo:g}, {hi:g}]; float images must be in [0, 1]{hint}")
    return torch.from_numpy(np.ascontiguousarray(_layout(x, key)).astype(np.float32))


def _labels(y: np.ndarray, key: str) -> torch.Tensor:
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise KdbenchError(f"{key} has dtype {y.dtype}; labels must be integers 0..K-1")
    if y.ndim != 1:
        raise KdbenchError(f"{key} has shape {y.shape}; labels must be one-dimensional")
    if len(y) and int(y.min()) < 0:
        raise KdbenchError(f"{key} holds the label {int(y.min())}; labels must be integers 0..K-1")
    return torch.from_numpy(y.astype(np.int64))


def check_arrays(arrays: dict, source: str) -> tuple[torch.Tensor, ...]:
    """Validate and convert the four arrays; returns (x_train, y_train, x_test, y_test, num_classes)."""
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise KdbenchError(f"{source}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        out[f"x_{split}"] = _images(x, f"{source}: x_{split}")
        out[f"y_{split}"] = _labels(y, f"{source}: y_{split}")
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise KdbenchError(f"{source}: x_train images are {tuple(out['x_train'].shape[1:])} (C, H, W) but x_test "
                           f"images are {tuple(out['x_test'].shape[1:])}")
    num_classes = int(out["y_train"].max()) + 1
    if num_classes < 2:
        raise KdbenchError(f"{source}: y_train holds a single class; a classifier needs at least 2")
    if int(out["y_test"].max()) >= num_classes:
        raise KdbenchError(f"{source}: y_test holds the label {int(out['y_test'].max())}, out of range: y_train's "
                           f"labels are 0..{num_classes - 1}")
    return out["x_train"], out["y_train"], out["x_test"], out["y_test"], num_classes


def load_npz(path: Path, name: str) -> TensorData:
    if not path.is_file():
        raise KdbenchError(f"npz file {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise KdbenchError(f"cannot read {str(path)!r} as .npz: it is not a zip archive (write it with np.savez)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise KdbenchError(f"{str(path)!r} lacks the array(s) {', '.join(missing)}; it holds "
                                   f"{', '.join(f.files) or 'nothing'} (needed: {', '.join(NPZ_KEYS)})")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except KdbenchError:
        raise
    except ValueError as e:  # object arrays (pickles) are refused
        raise KdbenchError(f"{str(path)!r} holds an array of Python objects ({e}); store numeric arrays") from None
    except Exception as e:  # noqa: BLE001 - not a zip, truncated, ...
        raise KdbenchError(f"cannot read {str(path)!r} as .npz: {type(e).__name__}: {e}") from None
    return make_tensor_data(name, *check_arrays(arrays, str(path)))


# ---- folder ------------------------------------------------------------------------------------------------

def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise KdbenchError(f"data folder {str(path)!r} does not exist")
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise KdbenchError(f"data folder {str(path)!r} has no {split}/ sub-folder (the layout is "
                               f"train/<class>/<image> and test/<class>/<image>)")


def _read_split(root: Path, classes: list[str] | None):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(root), loader=lambda p: p)  # lists the files only
    except (FileNotFoundError, OSError) as e:
        raise KdbenchError(f"{str(root)!r}: {str(e).splitlines()[0]}") from None
    if classes is not None:
        extra = sorted(set(ds.classes) - set(classes))
        if extra:
            raise KdbenchError(f"{str(root)!r} has class folder(s) {', '.join(extra)} that train/ lacks")
    index = {c: i for i, c in enumerate(classes if classes is not None else ds.classes)}
    images, labels = [], []
    for path, target in ds.samples:
        try:
            with Image.open(path) as im:
                im = im.convert("L") if im.mode in ("1", "L", "I", "I;16", "F") else im.convert("RGB")
                images.append(np.asarray(im))
        except Exception as e:  # noqa: BLE001 - an unreadable image file
            raise KdbenchError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from None
        labels.append(index[ds.classes[target]])
    return images, labels, ds.classes, [p for p, _ in ds.samples]


def load_folder(path: Path, name: str) -> TensorData:
    _check_folder(path)
    tr_img, tr_lab, classes, tr_paths = _read_split(path / "train", None)
    te_img, te_lab, _, te_paths = _read_split(path / "test", classes)
    all_img, all_paths = tr_img + te_img, tr_paths + te_paths
    sizes = {im.shape[:2] for im in all_img}
    if len(sizes) > 1:
        first = all_img[0].shape[:2]
        odd = next(i for i, im in enumerate(all_img) if im.shape[:2] != first)
        raise KdbenchError(f"images differ in size: {all_paths[0]!r} is {first[1]}x{first[0]} but {all_paths[odd]!r} "
                           f"is {all_img[odd].shape[1]}x{all_img[odd].shape[0]}; resize them to one size first")
    colour = any(im.ndim == 3 for im in all_img)

    def stack(images):
        if colour:
            images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
        return np.stack(images)

    arrays = {"x_train": stack(tr_img), "y_train": np.asarray(tr_lab, dtype=np.int64),
              "x_test": stack(te_img), "y_test": np.asarray(te_lab, dtype=np.int64)}
    x_tr, y_tr, x_te, y_te, _k = check_arrays(arrays, str(path))
    return make_tensor_data(name, x_tr, y_tr, x_te, y_te, len(classes))


KINDS = {"npz": load_npz, "folder": load_folder}


def entry_name(name: str) -> str:
    """The registry entry that loads the dataset `name`: `npz:PATH` for `npz:/data/mine.npz`, else `name`."""
    kind, sep, _ = name.partition(":")
    return f"{kind}:PATH" if sep and kind in KINDS else name


def _user_loader(kind: str):
    def load(cfg: DataConfig) -> TensorData:
        kind_, sep, path = cfg.name.partition(":")
        if not sep or kind_ != kind or path in ("", "PATH"):
            raise KdbenchError(f"dataset {cfg.name!r}: give a path, e.g. {kind}:data/mine.{kind}")
        return KINDS[kind](Path(path), cfg.name)
    return load


DATASETS.add("npz:PATH", _user_loader("npz"),
             "your own .npz: x_train, y_train, x_test, y_test (uint8 0-255 or float 0-1)")
DATASETS.add("folder:PATH", _user_loader("folder"),
             "your own images, ImageFolder layout: PATH/train/<class>/*, PATH/test/<class>/*")
