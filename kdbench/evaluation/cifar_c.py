"""CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations") from their released .npy files, evaluated beside the synthetic corruptions.

`--corruptions-from DIR` points at the extracted folder (its corruption names enter the suite's `eval.cifar_c`
and so every job id: `with_cifar_c`): one `<corruption>.npy` per corruption, uint8 of shape
(5 x N, 32, 32, 3) holding the N test images at severities 1..5 in order (N = 10000), and `labels.npy`. Every
`.npy` other than labels.npy is a corruption. Metrics (names are stable strings):

- `cifar-c/<corruption>/<severity>`: accuracy at each of the suite's `eval.severities`,
- `cifar-c/<corruption>`: mean over those severities,
- `cifar-c/mca`: mean over the 15 standard corruptions (STANDARD) and the severities. The release's 4 extra files
  (EXTRA: gaussian_blur, saturate, spatter, speckle_noise, the paper's held-out validation corruptions) are
  reported one by one but left out of the mean; a folder holding none of the 15 averages all its files.

With a test subset (`data.test_subset`) the same test images are picked from every severity block. The labels
of the first block must equal the test labels, so a folder of the wrong dataset is an error, not a number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.errors import KdbenchError
from ..core.metric_names import in_family
from ..training.loop import predict_logits

STANDARD = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
            "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("gaussian_blur", "saturate", "spatter", "speckle_noise")


def corruption_files(folder: Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """The corruption .npy files of a CIFAR-C folder (those of `names`, in that order, or all), checked to exist
    (one-line error otherwise)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise KdbenchError(f"--corruptions-from: folder {str(folder)!r} does not exist")
    if not (folder / "labels.npy").is_file():
        raise KdbenchError(f"--corruptions-from: {str(folder)!r} has no labels.npy (expected the extracted "
                           f"CIFAR-10-C or CIFAR-100-C folder)")
    files = sorted(p for p in folder.glob("*.npy") if p.name != "labels.npy")
    if not files:
        raise KdbenchError(f"--corruptions-from: {str(folder)!r} holds no corruption .npy files")
    if names is None:
        return files
    by_name = {p.stem: p for p in files}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KdbenchError(f"--corruptions-from: {str(folder)!r} has no {missing[0]}.npy; it has: "
                           f"{', '.join(by_name)}")
    return [by_name[n] for n in names]


def with_cifar_c(suite, folder: Path | None):
    """`suite` with the CIFAR-C corruptions of `folder` in its `eval.cifar_c`, so that they enter every job id
    (None: unchanged). A suite that names its corruptions already keeps them, and `folder` must hold each."""
    import dataclasses

    if folder is None:
        return suite
    if suite.eval.cifar_c:
        corruption_files(folder, suite.eval.cifar_c)
        return suite
    names = tuple(p.stem for p in corruption_files(folder))
    return dataclasses.replace(suite, eval=dataclasses.replace(suite.eval, cifar_c=names))


def evaluate_cifar_c(model, folder: Path | None, data, severities, batch_size: int,
                     names: tuple[str, ...] | None = None) -> dict[str, float]:
    """The metrics above for the corruptions `names` of `folder` (None: every corruption file in it)."""
    if folder is None:
        raise KdbenchError(f"this job evaluates the CIFAR-C corruptions {', '.join(names or ())}: give their "
                           "folder with --corruptions-from DIR")
    files = corruption_files(folder, names)
    n_full = data.full_test_size or len(data.x_test)
    index = data.test_index.numpy() if data.test_index is not None else np.arange(n_full)
    labels = np.load(Path(folder).expanduser() / "labels.npy", mmap_mode="r")
    if len(labels) != 5 * n_full:
        raise KdbenchError(f"{str(folder)!r}: labels.npy has {len(labels)} rows; 5 severities x {n_full} test "
                           f"images = {5 * n_full} expected for {data.name}")
    y = data.y_test
    if not np.array_equal(np.asarray(labels[index]), y.cpu().numpy()):
        raise KdbenchError(f"{str(folder)!r}: its labels do not match the {data.name} test labels (a CIFAR-C folder "
                           f"of another dataset?)")
    if tuple(data.shape) != (3, 32, 32):
        raise KdbenchError(f"CIFAR-C needs 3x32x32 test images; {data.name} has {data.shape}")
    metrics, all_acc, std_acc = {}, [], []
    for path in files:
        arr = np.load(path, mmap_mode="r")
        if arr.shape != (5 * n_full, 32, 32, 3) or arr.dtype != np.uint8:
            raise KdbenchError(f"{str(path)!r} has shape {arr.shape} and dtype {arr.dtype}; expected uint8 "
                               f"({5 * n_full}, 32, 32, 3)")
        name, accs = path.stem, []
        for sev in severities:
            block = np.asarray(arr[(sev - 1) * n_full + index])
            x = torch.from_numpy(block).to(data.x_test.device).permute(0, 3, 1, 2).float().div_(255.0)
            acc = (predict_logits(model, x, batch_size).argmax(1) == y).float().mean().item()
            metrics[in_family("cifar-c", name, sev)] = acc
            accs.append(acc)
        metrics[in_family("cifar-c", name)] = sum(accs) / len(accs)
        all_acc.extend(accs)
        if name in STANDARD:
            std_acc.extend(accs)
    pool = std_acc or all_acc
    metrics["cifar-c/mca"] = sum(pool) / len(pool)
    return metrics
