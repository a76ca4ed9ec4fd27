"""Datasets from generated files only: npz in every layout and every validation error, a folder of PNGs,
torchvision-layout MNIST / Fashion-MNIST / CIFAR-10 / CIFAR-100 files read offline, the missing-data error,
subsets, augmentation, CIFAR-10-C files, and data fingerprints in job ids."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import run_main
from fake_datasets import patch_cifar_checksums, write_cifar, write_cifar_c, write_mnist, write_png_folder

from kdbench.data.load import load_data, resolve_data_config
from kdbench.data.registry import DataConfig, config_dict
from kdbench.core.errors import KdbenchError


def npz(tmp_path, name="d.npz", **arrays):
    rng = np.random.default_rng(0)
    base = {"x_train": rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), "y_train": np.arange(12) % 3,
            "x_test": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), "y_test": np.arange(6) % 3}
    base.update(arrays)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def load_npz(path):
    return load_data(resolve_data_config(DataConfig(name=f"npz:{path}")))


# ---- npz ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "NHWC-float", "NCHW-float"])
def test_npz_layouts_are_detected(tmp_path, layout):
    rng = np.random.default_rng(1)
    c = 1 if layout == "NHW" else 3
    nchw = rng.integers(0, 256, (10, c, 6, 7), dtype=np.uint8)
    nchw_te = rng.integers(0, 256, (4, c, 6, 7), dtype=np.uint8)

    def lay(x):
        if layout == "NHW":
            return x[:, 0]
        x = x.transpose(0, 2, 3, 1) if layout.startswith("NHWC") else x
        return (x / 255.0).astype(np.float32) if layout.endswith("float") else x

    data = load_npz(npz(tmp_path, x_train=lay(nchw), y_train=np.arange(10) % 2, x_test=lay(nchw_te),
                        y_test=np.arange(4) % 2))
    assert data.shape == (c, 6, 7) and data.num_classes == 2
    assert data.x_train.dtype == torch.float32
    torch.testing.assert_close(data.x_train, torch.from_numpy(nchw).float() / 255.0)
    torch.testing.assert_close(data.x_test, torch.from_numpy(nchw_te).float() / 255.0)
    assert len(data.mean) == c and data.y_train.dtype == torch.long


NPZ_ERRORS = [
    ({"y_test": None}, "lacks the array(s) y_test"),
    ({"y_train": np.arange(11) % 3}, "x_train has 12 images but y_train has 11 labels"),
    ({"x_test": np.full((6, 8, 8), 1.5, np.float32)}, "float images must be in [0, 1]"),
    ({"x_test": np.full((6, 8, 8), -0.1, np.float32)}, "float images must be in [0, 1]"),
    ({"x_train": np.full((12, 8, 8), np.nan, np.float32)}, "NaN or infinite"),
    ({"x_train": np.full((12, 8, 8), np.inf, np.float64)}, "NaN or infinite"),
    ({"y_train": np.arange(12) % 3 - 1}, "holds the label -1"),
    ({"y_test": np.arange(6) % 3 + 2}, "y_test holds the label 4, out of range"),
    ({"x_train": np.zeros((12, 8, 8), np.int64)}, "has dtype int64; images must be uint8"),
    ({"y_train": (np.arange(12) % 3).astype(np.float32)}, "labels must be integers"),
    ({"y_train": (np.arange(12) % 3 == 0)}, "labels must be integers"),
    ({"y_train": (np.arange(12) % 3).reshape(12, 1)}, "labels must be one-dimensional"),
    ({"x_train": np.zeros((12, 3, 3, 3), np.uint8)}, "cannot tell whether"),
    ({"x_train": np.zeros((12, 8, 8, 8, 1), np.uint8)}, "images must be NHW, NHWC or NCHW"),
    ({"x_train": np.zeros((12, 9, 9), np.uint8)}, "x_train images are (1, 9, 9)"),
    ({"y_train": np.zeros(12, np.int64), "y_test": np.zeros(6, np.int64)}, "at least 2"),
    ({"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)}, "x_test is empty"),
]


@pytest.mark.parametrize("arrays,message", NPZ_ERRORS, ids=[m for _, m in NPZ_ERRORS])
def test_npz_validation_errors(tmp_path, arrays, message):
    with pytest.raises(KdbenchError) as e:
        load_npz(npz(tmp_path, **arrays))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_npz_unreadable_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(KdbenchError, match="cannot read"):
        load_npz(bad)
    objects = tmp_path / "obj.npz"
    np.savez(objects, x_train=np.array([{"a": 1}] * 3, dtype=object), y_train=np.arange(3), x_test=np.zeros((1, 2, 2)),
             y_test=np.arange(1))
    with pytest.raises(KdbenchError, match="Python objects"):
        load_npz(objects)
    with pytest.raises(KdbenchError, match="does not exist"):
        resolve_data_config(DataConfig(name=f"npz:{tmp_path / 'missing.npz'}"))
    with pytest.raises(KdbenchError, match="npz:PATH or folder:PATH"):
        resolve_data_config(DataConfig(name="csv:/x"))


def test_npz_path_is_relative_to_the_suite_file_and_fingerprinted(tmp_path):
    from kdbench.suite.load import load_suite

    (tmp_path / "data").mkdir()
    npz(tmp_path / "data", "mine.npz")
    suite_file = tmp_path / "s.toml"
    suite_file.write_text('dataset = "npz:data/mine.npz"\nseeds = [1]\n[methods]\nce = {}\n')
    suite = load_suite(str(suite_file))
    assert suite.data.name == f"npz:{(tmp_path / 'data' / 'mine.npz').resolve()}"
    assert len(suite.data.sha256) == 64
    ids = {j.job_id for j in suite.jobs()}
    npz(tmp_path / "data", "mine.npz", y_train=np.arange(12) % 4, y_test=np.arange(6) % 4)  # changed content
    with pytest.raises(KdbenchError, match="changed since its jobs were defined"):
        load_data(suite.data)
    again = load_suite(str(suite_file))
    assert not ids & {j.job_id for j in again.jobs()}  # changed data: new jobs, never a stale teacher
    assert load_data(again.data).num_classes == 4


# ---- folder of PNGs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_png_folder(tmp_path, mode, channels):
    root = write_png_folder(tmp_path / "imgs", mode=mode)
    data = load_data(resolve_data_config(DataConfig(name=f"folder:{root}")))
    assert data.shape == (channels, 10, 12) and data.num_classes == 3
    assert len(data.x_train) == 12 and len(data.x_test) == 6
    assert data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # classes are the sorted folder names
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


def test_png_folder_errors(tmp_path):
    from PIL import Image

    root = write_png_folder(tmp_path / "a")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "test" / "cat" / "odd.png")
    with pytest.raises(KdbenchError, match="images differ in size"):
        load_data(resolve_data_config(DataConfig(name=f"folder:{root}")))
    root = write_png_folder(tmp_path / "b")
    (root / "test" / "fox").mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "test" / "fox" / "0.png")
    with pytest.raises(KdbenchError, match="fox that train/ lacks"):
        load_data(resolve_data_config(DataConfig(name=f"folder:{root}")))
    (tmp_path / "c" / "train").mkdir(parents=True)
    with pytest.raises(KdbenchError, match="no test/ sub-folder"):
        resolve_data_config(DataConfig(name=f"folder:{tmp_path / 'c'}"))


# ---- torchvision layouts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_from_idx_files(tmp_path, name, folder):
    written = write_mnist(tmp_path, folder)
    data = load_data(DataConfig(name=name), root=tmp_path)
    assert data.shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.x_train) == 300 and len(data.x_test) == 150
    x, y = written["t10k"]
    torch.testing.assert_close(data.x_test[:, 0], torch.from_numpy(x).float() / 255.0)
    assert data.y_test.tolist() == y.tolist()


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_from_pickle_batches(tmp_path, monkeypatch, classes):
    patch_cifar_checksums(monkeypatch)
    written = write_cifar(tmp_path, classes)
    data = load_data(DataConfig(name=f"cifar{classes}"), root=tmp_path)
    assert data.shape == (3, 32, 32) and data.num_classes == classes
    assert len(data.x_train) == 50 and len(data.x_test) == 20
    x, y = written["test"]
    torch.testing.assert_close(data.x_test, torch.from_numpy(x).float() / 255.0)  # CHW order kept
    assert data.y_test.tolist() == y.tolist()


def test_missing_data_is_one_line_naming_the_folder_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(KdbenchError) as e:
        load_data(DataConfig(name="cifar10"))
    msg = str(e.value)
    assert str(tmp_path / "nothing-here" / "cifar-10-batches-py") in msg and "--download" in msg and "\n" not in msg

    out = tmp_path / "out"
    r = run_main("run", "--suite", "robustness-mnist-smoke", "--data-dir", tmp_path / "empty", "--out", out, "--quiet")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and str(tmp_path / "empty" / "MNIST" / "raw") in line and "--download" in line
    assert not out.exists()  # nothing written


def test_data_dir_precedence(tmp_path, monkeypatch):
    from kdbench.data.load import data_root, default_data_dir

    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert data_root(DataConfig()) == tmp_path / "env"
    assert data_root(DataConfig(data_dir=str(tmp_path / "suite"))) == tmp_path / "suite"
    assert data_root(DataConfig(data_dir=str(tmp_path / "suite")), tmp_path / "cli") == tmp_path / "cli"
    monkeypatch.delenv("KDBENCH_DATA")
    assert default_data_dir() == __import__("pathlib").Path.home() / ".cache" / "kdbench" / "data"


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(KdbenchError, match="could not download 'mnist'.*Network is unreachable"):
        load_data(DataConfig(name="mnist"), root=tmp_path, download=True)
    out = tmp_path / "out"
    r = run_main("run", "--suite", "robustness-mnist-smoke", "--data-dir", tmp_path, "--download", "--out", out)
    assert r.returncode == 2 and "could not download 'mnist'" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()  # the download is tried once, before any job


# ---- subsets, config, augmentation -------------------------------------------------------------------------

def test_subsets_are_fixed_and_keep_test_positions(tmp_path):
    write_mnist(tmp_path)
    cfg = DataConfig(name="mnist", train_subset=40, test_subset=10)
    a, b = load_data(cfg, root=tmp_path), load_data(cfg, root=tmp_path)
    full = load_data(DataConfig(name="mnist"), root=tmp_path)
    assert len(a.x_train) == 40 and len(a.x_test) == 10 and a.full_test_size == 150
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.test_index, b.test_index)
    torch.testing.assert_close(a.x_test, full.x_test[a.test_index])
    with pytest.raises(KdbenchError, match="larger than the train split"):
        load_data(DataConfig(name="mnist", train_subset=301), root=tmp_path)
    with pytest.raises(KdbenchError, match="must be >= 0"):
        DataConfig(test_subset=-1)


def test_new_data_fields_leave_old_job_ids_alone():
    from kdbench.core.identity import content_only

    assert set(content_only(config_dict(DataConfig()))) == {"name", "test_fraction", "augment"}
    assert content_only(config_dict(DataConfig(train_subset=5)))["train_subset"] == 5


def test_augmentations_are_batched_and_deterministic():
    from kdbench.data.augment import horizontal_flip, make_augmenter, random_crop

    x = torch.rand(64, 3, 8, 8)
    names = ("random_crop", "horizontal_flip")
    a1, a2, other = make_augmenter(names, 3, "cpu"), make_augmenter(names, 3, "cpu"), make_augmenter(names, 4, "cpu")
    first = a1(x)
    assert torch.equal(first, a2(x))  # same seed, same stream
    assert not torch.equal(first, a1(x)) and not torch.equal(first, other(x))  # next batch / other seed differ
    assert make_augmenter((), 3, "cpu") is None
    g = torch.Generator().manual_seed(0)
    flipped = horizontal_flip(x, g)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    crop = random_crop(torch.ones(200, 1, 8, 8), torch.Generator().manual_seed(0))
    assert crop.shape == (200, 1, 8, 8)
    zeros = (crop == 0).flatten(1).sum(1)
    assert zeros.max() > 0 and (zeros == 0).any()  # some images shifted into the zero padding, some not
    # a crop is a shifted copy: every output row of an image is a (zero-padded) window of an input row
    img = torch.arange(64.0).view(1, 1, 8, 8) + 1
    out = random_crop(img, torch.Generator().manual_seed(5))[0, 0]
    nz = out[out > 0]
    assert torch.all(torch.diff(nz.view(-1)) > 0)  # order preserved


def test_unknown_augmentation_is_a_suite_error():
    from kdbench.suite.load import parse_suite

    with pytest.raises(KdbenchError, match="unknown augmentation 'random_flip'"):
        parse_suite({"data": {"augment": ["random_flip"]}})


# ---- CIFAR-10-C ----------------------------------------------------------------------------------------------

def test_cifar_c_files_are_evaluated_beside_the_test_set(tmp_path, monkeypatch):
    from kdbench.evaluation.cifar_c import evaluate_cifar_c
    from kdbench.models.registry import ModelInput, build_model

    patch_cifar_checksums(monkeypatch)
    written = write_cifar(tmp_path / "data", 10)
    folder = write_cifar_c(tmp_path / "CIFAR-10-C", *written["test"])
    data = load_data(DataConfig(name="cifar10", test_subset=8), root=tmp_path / "data")
    model = build_model("resnet20", ModelInput(data.shape, 10, data.mean, data.std)).eval()
    m = evaluate_cifar_c(model, folder, data, (1, 5), 64)
    assert set(m) == {"cifar-c/fog/1", "cifar-c/fog/5", "cifar-c/fog", "cifar-c/gaussian_noise/1",
                      "cifar-c/gaussian_noise/5", "cifar-c/gaussian_noise", "cifar-c/mca"}
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert m["cifar-c/mca"] == pytest.approx(np.mean([m[k] for k in m if k.count("/") == 2]))

    # the release's 4 extra files are reported one by one but held out of cifar-c/mca (the 15 standard ones): a
    # model right on every image except black ones, and an extra corruption that blacks every image out
    x, y = written["test"]
    mixed = write_cifar_c(tmp_path / "mixed", x, y, names=("fog", "speckle_noise"))
    np.save(mixed / "speckle_noise.npy", np.zeros_like(np.load(mixed / "speckle_noise.npy")))
    import kdbench.evaluation.cifar_c as cc

    def oracle(model, xb, bs):
        pred = torch.where(xb.flatten(1).amax(1) > 0, data.y_test, (data.y_test + 1) % 10)
        return torch.nn.functional.one_hot(pred, 10).float()

    monkeypatch.setattr(cc, "predict_logits", oracle)
    m = evaluate_cifar_c(model, mixed, data, (1, 5), 64)
    assert m["cifar-c/fog"] == 1.0 and m["cifar-c/speckle_noise"] == 0.0 and m["cifar-c/mca"] == 1.0
    monkeypatch.undo()
    patch_cifar_checksums(monkeypatch)

    wrong = write_cifar_c(tmp_path / "wrong", x, (y + 1) % 10)
    with pytest.raises(KdbenchError, match="do not match"):
        evaluate_cifar_c(model, wrong, data, (1,), 64)
    np.save(folder / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(KdbenchError, match="fog.npy.*expected uint8"):
        evaluate_cifar_c(model, folder, data, (1,), 64)
    with pytest.raises(KdbenchError, match="no labels.npy"):
        evaluate_cifar_c(model, tmp_path / "data", data, (1,), 64)


def test_list_shows_the_datasets():
    r = run_main("list", "datasets")
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "npz:PATH", "folder:PATH"):
        assert name in r.stdout


def test_tensor_data_to_keeps_everything(tmp_path):
    write_mnist(tmp_path)
    d = load_data(DataConfig(name="mnist", test_subset=5), root=tmp_path).to("cpu")
    assert d.full_test_size == 150 and d.test_index is not None
    assert dataclasses.fields(d)  # still a dataclass
