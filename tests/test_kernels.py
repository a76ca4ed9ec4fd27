"""Which machine made a record, and pinned CPU kernels (`[executor] kernels`, --kernels)."""

import json

import pytest

from conftest import run_cli, run_main

from kdbench.core.machine import KERNEL_LEVELS, KERNEL_VARS, machine_of, pin_kernels, same_machine

AVX2_CPU = {"model": "AMD EPYC", "capability": "AVX2", "flags": ["avx", "avx2", "f16c", "fma", "sse4_2"]}
AVX512_FLAGS = AVX2_CPU["flags"] + ["avx512bw", "avx512f", "avx512vl"]


def _env(cpu):
    return {"device": "cpu", "threads": 1, "torch": "2.x", "torchattacks": "3.x", "gpu": None, "cpu": cpu}


def test_an_avx512_cpu_pinned_to_avx2_is_the_avx2_cpu_and_a_partial_pin_is_not():
    native = _env(AVX2_CPU)
    pinned = _env({**AVX2_CPU, "flags": AVX512_FLAGS, "kernels": KERNEL_LEVELS["avx2"]})
    assert same_machine(native, pinned)
    # torch alone at AVX2 reports torch's AVX2 level, but oneDNN and MKL still run AVX-512 kernels
    torch_only = _env({**AVX2_CPU, "flags": AVX512_FLAGS, "kernels": {"ATEN_CPU_CAPABILITY": "avx2"}})
    assert not same_machine(native, torch_only) and not same_machine(pinned, torch_only)
    assert not same_machine(native, _env({**AVX2_CPU, "flags": AVX512_FLAGS}))  # same model name, other features
    assert not same_machine(pinned, _env({**AVX2_CPU, "model": "Intel Xeon", "flags": AVX512_FLAGS,
                                          "kernels": KERNEL_LEVELS["avx2"]}))  # another CPU model
    assert same_machine({}, {}) and machine_of({})["cpu_level"] == "None"  # records made before CPUs were kept


def test_kernels_must_be_a_known_level(tmp_path, tiny_suite):
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_suite.read_text() + '\n[executor]\nkernels = "avx3"\n')
    proc = run_main("run", "--suite", bad, "--dry-run")
    assert proc.returncode == 2 and "executor.kernels 'avx3' is unknown; choose from: native, avx2" in proc.stderr
    assert run_main("run", "--suite", tiny_suite, "--kernels", "avx3").returncode == 2


def test_kernels_cannot_be_pinned_once_torch_chose_them(monkeypatch):
    import torch

    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT"):
        pytest.skip("torch already runs at most AVX2 kernels on this CPU")
    for name in KERNEL_VARS:  # whatever pin_kernels sets is undone after the test
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    from kdbench.core.errors import KdbenchError

    with pytest.raises(KdbenchError, match="start kdbench with ATEN_CPU_CAPABILITY=avx2"):
        pin_kernels("avx2")


@pytest.mark.slow  # a run in a fresh process
def test_a_run_with_pinned_kernels_records_them_and_caches_its_teachers_apart(tmp_path, tiny_suite):
    import torch

    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT",) or "avx2" not in str(torch.__config__.show()).lower():
        pytest.skip("pinning AVX2 kernels needs an x86-64 CPU with AVX2")
    cache = tmp_path / "cache"
    proc = run_cli("run", "--suite", tiny_suite, "--methods", "kd", "--seeds", "1", "--workers", "1", "--quiet",
                   "--out", tmp_path / "out", "--cache-dir", cache, "--kernels", "avx2", "--no-save-students")
    assert proc.returncode == 0, proc.stderr
    for record in (json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")):
        assert record["env"]["cpu"]["kernels"] == KERNEL_LEVELS["avx2"] and record["env"]["cpu"]["capability"] == "AVX2"
    (teacher,) = [json.loads(p.read_text()) for p in (cache / "teachers").glob("*.json")]
    assert teacher["kernels"] == KERNEL_LEVELS["avx2"]
