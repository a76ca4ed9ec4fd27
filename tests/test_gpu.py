"""The `[gpu]` settings (mixed precision, channels-last, cuDNN autotuning): parsed and validated, part of the
ids of CUDA jobs only, and their mechanics checked on the CPU (CPU autocast to bfloat16 stands in for CUDA
autocast): training runs under autocast, the adversarial inner loops run in float32 all the same."""

import tomllib

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_SUITE, run_main
from kdbench.core.errors import KdbenchError
from kdbench.core.gpu import GpuConfig, full_precision, place, training_precision
from kdbench.methods import METHODS, Batch, TrainContext
from kdbench.models.registry import ModelInput, build_model
from kdbench.core.gpu import job_gpu
from kdbench.training.teacher_cache import teacher_config
from kdbench.suite.jobs import job_from_config
from kdbench.suite.load import parse_suite
from kdbench.training.loop import fit

DOC = tomllib.loads(TINY_SUITE)
INP = ModelInput((1, 8, 8), 10, (0.3,), (0.37,))


def test_defaults_and_bad_values():
    assert parse_suite(DOC).gpu == GpuConfig("bf16", True, True)
    suite = parse_suite({**DOC, "gpu": {"autocast": "off", "channels_last": False, "cudnn_benchmark": False}})
    assert suite.gpu == GpuConfig("off", False, False)
    with pytest.raises(KdbenchError, match=r"gpu.autocast 'fp8' is unknown; choose from: bf16, fp16, off"):
        parse_suite({**DOC, "gpu": {"autocast": "fp8"}})
    with pytest.raises(KdbenchError, match=r"gpu.channels_last must be true or false"):
        parse_suite({**DOC, "gpu": {"channels_last": "yes"}})
    with pytest.raises(KdbenchError, match=r"unknown key 'autocsat'.*did you mean 'autocast'"):
        parse_suite({**DOC, "gpu": {"autocsat": "off"}})


def test_bad_gpu_value_is_one_line_exit_2(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TINY_SUITE + '\n[gpu]\nautocast = "half"\n')
    r = run_main("run", "--suite", path, "--out", tmp_path / "out")
    assert r.returncode == 2 and "gpu.autocast 'half'" in r.stderr and "bf16, fp16, off" in r.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_settings_enter_the_ids_of_cuda_jobs_only():
    from kdbench.core.identity import content_only

    plain = parse_suite(DOC)
    off = parse_suite({**DOC, "gpu": {"autocast": "off"}})
    ids = lambda suite, cuda: [j.job_id for j in suite.jobs(cuda)]  # noqa: E731
    assert ids(plain, False) == ids(off, False)  # CPU jobs: the [gpu] table changes nothing
    assert all(j.config()["gpu"] is None and "gpu" not in content_only(j.config()) for j in plain.jobs(False))
    cpu_job = plain.jobs(False)[-1]
    assert job_from_config(cpu_job.config(), "x").job_id == cpu_job.job_id
    assert set(ids(plain, True)).isdisjoint(ids(plain, False))
    assert set(ids(plain, True)).isdisjoint(ids(off, True))  # bf16 and float32 runs are different records
    job = plain.jobs(True)[-1]
    assert job_from_config(job.config(), "x").job_id == job.job_id  # `reproduce` rebuilds the same job
    assert teacher_config(job.teacher_specs()[0], job, 1)["gpu"]["autocast"] == "bf16"  # cached teachers too
    assert "threads" not in teacher_config(job.teacher_specs()[0], job, 1)  # set by [gpu] instead
    assert job_gpu(job, torch.device("cpu")) is None  # a CUDA job reproduced on the CPU runs without them
    assert job_gpu(job, torch.device("cuda")) == plain.gpu


def test_place_uses_channels_last_on_the_cpu_and_where_the_gpu_settings_ask():
    # a convolution with several input channels (for one channel the two layouts coincide)
    conv = lambda m: next(p for p in m.parameters() if p.dim() == 4 and p.shape[1] > 1)  # noqa: E731
    nhwc = lambda m: conv(m).is_contiguous(memory_format=torch.channels_last) and not conv(m).is_contiguous()  # noqa: E731
    m = place(build_model("cnn-small", INP), torch.device("cpu"), GpuConfig(channels_last=True))
    assert nhwc(m)
    m = place(build_model("cnn-small", INP), torch.device("cpu"), GpuConfig(channels_last=False))
    assert conv(m).is_contiguous()
    m = place(build_model("cnn-small", INP), torch.device("cpu"), None)  # a CPU job: always NHWC
    assert nhwc(m)


class _Cfg:
    optimizer, lr, weight_decay, batch_size, schedule = "adam", 3e-3, 0.0, 64, "constant"


def test_fit_runs_its_steps_under_autocast_and_learns():
    torch.manual_seed(0)
    x, y = torch.rand(256, 1, 8, 8), torch.randint(0, 10, (256,))
    y = (x.flatten(1)[:, :10].argmax(1))  # a learnable rule
    model = build_model("cnn-small", INP)
    seen = []

    def step(idx, progress):
        logits = model(x[idx])
        seen.append(logits.dtype)
        return {"ce": F.cross_entropy(logits, y[idx])}

    history = fit(model, list(model.parameters()), step, len(x), 8, _Cfg, 0, torch.device("cpu"),
                  amp=torch.bfloat16)
    assert set(seen) == {torch.bfloat16}
    assert history[-1]["ce"] < history[0]["ce"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32


def test_fit_with_float16_scales_the_loss():
    probe = torch.nn.Linear(4, 2)
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            probe(torch.rand(2, 4))
        torch.amp.GradScaler("cpu")
    except (RuntimeError, AttributeError, TypeError) as e:
        pytest.skip(f"this torch build has no CPU float16 autocast: {e}")
    torch.manual_seed(0)
    x = torch.rand(128, 1, 8, 8)
    y = x.flatten(1)[:, :10].argmax(1)
    model = build_model("cnn-small", INP)
    history = fit(model, list(model.parameters()),
                  lambda idx, p: {"ce": F.cross_entropy(model(x[idx]), y[idx])}, len(x), 6, _Cfg, 0,
                  torch.device("cpu"), amp=torch.float16)
    assert history[-1]["ce"] < history[0]["ce"]


@pytest.mark.parametrize("method", ["ard", "rslad"])
def test_adversarial_inner_loop_runs_in_float32_under_autocast(method):
    torch.manual_seed(0)
    student, teacher = build_model("cnn-small", INP), build_model("cnn-small", INP).eval()
    ctx = TrainContext(num_classes=10, input_shape=(1, 8, 8), epochs=1, adv_eps=0.1, adv_steps=2,
                       adv_step_size=0.05)
    distiller = METHODS.get(method)(student, [teacher], METHODS.get(method).defaults, ctx)
    dtypes, attacking = [], []
    perturb = distiller.perturb

    def marked_perturb(*args):  # the student's passes inside the inner attack (in eval mode, or ARD's train mode)
        attacking.append(True)
        try:
            return perturb(*args)
        finally:
            attacking.pop()

    distiller.perturb = marked_perturb
    hook = student.register_forward_hook(lambda m, i, out: dtypes.append((bool(attacking), out.dtype)))
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        t = teacher(x)
    distiller.train()
    with training_precision(torch.device("cpu"), torch.bfloat16):
        distiller.losses(Batch(x, torch.randint(0, 10, (8,)), [t]))
    hook.remove()
    attack = [d for in_attack, d in dtypes if in_attack]
    train = [d for in_attack, d in dtypes if not in_attack]
    assert attack and set(attack) == {torch.float32}
    assert train and set(train) == {torch.bfloat16}


def test_full_precision_turns_autocast_off():
    lin = torch.nn.Linear(3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(torch.rand(2, 3)).dtype == torch.bfloat16
        with full_precision(torch.rand(1)):
            assert lin(torch.rand(2, 3)).dtype == torch.float32
