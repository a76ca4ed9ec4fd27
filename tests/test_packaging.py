"""The wheel carries the built-in suites: `--suite robustness` works from an installed package outside the
repository."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


SOURCES = ("kdbench", "benchmarks", "pyproject.toml", "setup.py", "README.md")


@pytest.mark.slow  # pip builds a wheel and installs it into a fresh venv: about 15 s of subprocesses
def test_wheel_ships_the_builtin_suites_and_they_load_outside_the_repo(tmp_path):
    # built from a copy of the sources: an in-tree build would reuse (and leave) a build/ folder in the repository
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("kdbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kdbench/suites/robustness.toml" in names
    assert "kdbench/methods/kd.py" in names
    # only suite files and their reference JSON: benchmarks/*.py are scripts of the repository, not modules
    suites = [n for n in names if n.startswith("kdbench/suites/")]
    assert suites and all(n.endswith((".toml", ".json")) for n in suites), suites
    assert all(n.startswith(("kdbench/", "kdbench-")) for n in names), names  # nothing at the top level

    # a fresh venv whose only kdbench is the wheel; the heavy dependencies come from this environment
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert sorted(p.suffix for p in (site / "kdbench" / "suites").iterdir()) and not list(
        (site / "kdbench" / "suites").glob("*.py"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import kdbench, kdbench.suite.load as s; suite = s.load_suite('robustness'); "
            "print(kdbench.__file__); print(s.resolve_suite_path('robustness')); print(len(suite.jobs()))")
    out = subprocess.run([py, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    module_file, suite_file, n_jobs = out.stdout.split()
    assert module_file.startswith(str(site)) and suite_file.startswith(str(site))
    assert int(n_jobs) > 30
    listed = subprocess.run([py, "-m", "kdbench", "list", "suites"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0 and "robustness" in listed.stdout
