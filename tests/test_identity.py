"""Job ids hash what determines the numbers: content hashes of data and checkpoints, never their paths."""

import dataclasses
import shutil

import numpy as np
import torch

from kdbench.core.identity import content_only, digest
from kdbench.suite.load import load_suite


def _suite(tmp_path, dataset: str, teacher: str = '"cnn-large"', data_dir: str = ""):
    path = tmp_path / f"s{len(list(tmp_path.glob('s*.toml')))}.toml"
    path.write_text(f'''name = "ids"
dataset = "{dataset}"
seeds = [1]
headline_eps = 0.1
{f'[data]{chr(10)}data_dir = "{data_dir}"' if data_dir else ""}
[[pairs]]
teacher = {teacher}
student = "cnn-small"
[methods]
kd = {{}}
''')
    return load_suite(str(path))


def _npz(path, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 2,
             x_test=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8), y_test=np.arange(10) % 2)
    return path


def _ids(suite):
    return [j.job_id for j in suite.jobs()]


def test_moving_a_users_dataset_keeps_ids_and_changing_a_byte_changes_them(tmp_path):
    a = _npz(tmp_path / "here" / "d.npz")
    b = tmp_path / "elsewhere" / "deeper" / "renamed.npz"
    b.parent.mkdir(parents=True)
    shutil.copy(a, b)
    ids_a, ids_b = _ids(_suite(tmp_path, f"npz:{a}")), _ids(_suite(tmp_path, f"npz:{b}"))
    assert ids_a == ids_b
    _npz(b, seed=1)
    assert set(_ids(_suite(tmp_path, f"npz:{b}"))).isdisjoint(ids_a)


def test_the_data_folder_and_download_flag_are_not_identity(tmp_path):
    plain = _suite(tmp_path, "digits")
    elsewhere = _suite(tmp_path, "digits", data_dir=str(tmp_path / "data"))
    assert elsewhere.data.data_dir and _ids(plain) == _ids(elsewhere)
    job = plain.jobs()[-1]
    fetched = dataclasses.replace(job, data=dataclasses.replace(job.data, download=True))
    assert fetched.job_id == job.job_id
    assert dataclasses.replace(job, seed=2).job_id != job.job_id  # a real change still changes the id


def test_moving_a_teacher_checkpoint_keeps_ids_and_other_weights_change_them(tmp_path):
    from kdbench.models.registry import ModelInput, build_model

    model = build_model("cnn-large", ModelInput((1, 8, 8), 10, (0.5,), (0.25,)))
    a = tmp_path / "ckpt" / "t.pt"
    a.parent.mkdir()
    torch.save(model.state_dict(), a)
    b = tmp_path / "moved" / "teacher.pt"
    b.parent.mkdir()
    shutil.copy(a, b)

    def table(p):
        return f'{{ checkpoint = "{p}", arch = "cnn-large", kind = "standard" }}'

    ids_a, ids_b = _ids(_suite(tmp_path, "digits", table(a))), _ids(_suite(tmp_path, "digits", table(b)))
    assert ids_a == ids_b
    torch.manual_seed(1)
    torch.save(build_model("cnn-large", ModelInput((1, 8, 8), 10, (0.5,), (0.25,))).state_dict(), b)
    assert set(_ids(_suite(tmp_path, "digits", table(b)))).isdisjoint(ids_a)


def test_fields_at_their_neutral_value_are_left_out_and_others_kept():
    config = {"data": {"name": "digits", "train_subset": 0, "test_subset": 100, "data_dir": "/x", "sha256": ""},
              "pair": {"teacher": "a", "pretrained": None, "ensemble": ()}, "gpu": None, "seed": 1}
    assert content_only(config) == {"data": {"name": "digits", "test_subset": 100}, "pair": {"teacher": "a"},
                                    "seed": 1}
    assert digest(config) == digest({**config, "gpu": None}) != digest({**config, "seed": 2})
