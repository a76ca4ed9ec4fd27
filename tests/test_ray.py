"""`run --executor ray`: a real Ray cluster on 127.0.0.1 (a head node and a worker node, one CPU each) gives the
same job ids and bit-identical metrics as the local executor; a worker killed mid-job is retried; failures are
recorded like local ones and a re-run resumes. The cluster tests need the `ray` extra and are skipped, with the
reason printed, without it."""

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import interruptible, ROOT, TINY_SUITE, run_main
from kdbench.core.errors import KdbenchError
from kdbench.suite.load import parse_suite
from kdbench.suite.configs import ExecutorConfig

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="the 'ray' extra is not installed: pip install -e '.[ray]'")

# Two Ray nodes (separate raylet processes, each with its own worker processes) in a helper process, so the test
# can stop them all. Everything binds to 127.0.0.1.
CLUSTER = """
import signal, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                  "gcs_server_port": int(sys.argv[1]), "include_dashboard": False})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
print(cluster.address, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    sys.stdin.read()  # until the test closes stdin (or terminates us)
finally:
    cluster.shutdown()
"""

# Ray on the loopback interface only, no token file written to ~/.ray, no usage report
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """(address, helper process) of a 2-node, 2-CPU Ray cluster on 127.0.0.1, stopped after the module."""
    if not HAVE_RAY:
        pytest.skip("the 'ray' extra is not installed: pip install -e '.[ray]'")
    tmp = tmp_path_factory.mktemp("ray")
    ray_env = {**RAY_ENV, "RAY_TMPDIR": str(tmp)}
    env = {**os.environ, **ray_env}
    with open(tmp / "cluster.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", CLUSTER, str(_free_port())], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), (tmp / "cluster.log").read_text()[-3000:]
        yield address, proc, ray_env
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the helper's own session: the cluster's processes only
            proc.wait()


def _suite(tmp_path: Path, name="suite.toml", **replace) -> Path:
    doc = TINY_SUITE
    for old, new in replace.items():
        assert old in doc
        doc = doc.replace(old, new)
    path = tmp_path / name
    path.write_text(doc)
    return path


def _records(out: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _driver(ray_env, suite, out, address, *extra) -> subprocess.Popen:
    """`python -m kdbench run --executor ray` in a subprocess (the environment as it is now: this test's cache);
    its output goes to files beside `out`."""
    env = {**os.environ, **ray_env, "PYTHONPATH": str(ROOT)}
    logs = [Path(f"{out}.{name}") for name in ("stdout", "stderr")]
    with open(logs[0], "w") as o, open(logs[1], "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", "--suite", str(suite), "--out", str(out),
                                 "--executor", "ray", "--address", address, *map(str, extra)], cwd=ROOT, env=env,
                                text=True, stdout=o, stderr=e, preexec_fn=interruptible)
    proc.logs = logs
    return proc


def _finish(driver: subprocess.Popen, timeout: float = 150) -> subprocess.CompletedProcess:
    try:
        driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    stdout, stderr = (p.read_text() for p in driver.logs)
    return subprocess.CompletedProcess(driver.args, driver.returncode, stdout, stderr)


def _run_ray(ray_env, suite, out, address, *extra) -> subprocess.CompletedProcess:
    return _finish(_driver(ray_env, suite, out, address, *extra))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.extend(children.get(p, []))
        todo.extend(children.get(p, []))
    return out


def _kill_job(cluster_pid: int, job_id: str, driver: subprocess.Popen, timeout: float = 120) -> int:
    """SIGKILL the Ray worker process of this cluster running job `job_id` (its process title is
    `ray::<job label> [<job id>]`), once it has run for a moment."""
    tag = f"[{job_id}]".encode()
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        for pid in _descendants(cluster_pid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::") and title.endswith(tag):
                time.sleep(0.3)  # mid-job, not at its first line
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} was not seen running")


def _job_id(suite: Path, label: str) -> str:
    import tomllib

    (job,) = [j for j in parse_suite(tomllib.loads(suite.read_text())).jobs() if j.label() == label]
    return job.job_id


# ---- without Ray -------------------------------------------------------------------------------------------


def test_executor_table_is_validated_and_never_changes_job_ids():
    import tomllib

    doc = tomllib.loads(TINY_SUITE)
    plain = parse_suite(doc)
    assert plain.executor == ExecutorConfig(cpus_per_job=1, gpus_per_job=0.0, max_retries=2)
    tuned = parse_suite({**doc, "executor": {"cpus_per_job": 4, "gpus_per_job": 0.5, "max_retries": 0}})
    assert tuned.executor == ExecutorConfig(4, 0.5, 0)
    assert [j.job_id for j in tuned.jobs()] == [j.job_id for j in plain.jobs()]
    for bad, msg in [({"cpus_per_job": 0}, "cpus_per_job must be an integer >= 1"),
                     ({"cpus_per_job": 1.5}, "must be an integer"),
                     ({"gpus_per_job": -1}, "gpus_per_job must be >= 0"),
                     ({"gpus_per_job": 1.5}, "a fraction of one GPU, or a whole number"),
                     ({"max_retries": -1}, "max_retries must be >= 0"),
                     ({"cpus": 2}, "unknown key 'cpus' in executor")]:
        with pytest.raises(KdbenchError, match=msg):
            parse_suite({**doc, "executor": bad})


def test_ray_only_flags_need_the_ray_executor(tmp_path, tiny_suite):
    proc = run_main("run", "--suite", tiny_suite, "--out", tmp_path / "out", "--address", "127.0.0.1:1")
    assert proc.returncode == 2 and "--address only apply to --executor ray" in proc.stderr
    proc = run_main("run", "--suite", tiny_suite, "--executor", "ray", "--cpus-per-job", "0")
    assert proc.returncode == 2 and "expected an integer >= 1" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_ray_executor_without_ray_is_one_error(tmp_path, tiny_suite, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    proc = run_main("run", "--suite", tiny_suite, "--out", tmp_path / "out", "--executor", "ray")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --executor ray needs Ray: pip install 'kdbench[ray]'"
    assert not (tmp_path / "out").exists()


@needs_ray
def test_unreachable_address_is_one_error(tmp_path, tiny_suite):
    port = _free_port()  # nothing listens there
    proc = run_main("run", "--suite", tiny_suite, "--out", tmp_path / "out", "--executor", "ray", "--address",
                    f"127.0.0.1:{port}")
    assert proc.returncode == 2 and f"cannot connect to the Ray cluster at '127.0.0.1:{port}'" in proc.stderr


# ---- on a real cluster ---------------------------------------------------------------------------------------


@needs_ray
@pytest.mark.slow  # a real two-node Ray cluster
def test_ray_cluster_gives_the_local_executors_job_ids_and_numbers(tmp_path, ray_cluster, tiny_run):
    """Against the session's local run of the tiny suite (one thread per job, as a Ray job with cpus_per_job =
    1 gets)."""
    address, _, env = ray_cluster
    suite = tiny_run.suite  # 2 teachers + ce, kd x 2 seeds
    out, cache = tmp_path / "ray", tmp_path / "ray-cache"  # a cache of its own: teachers trained on Ray
    proc = _run_ray(env, suite, out, address, "--cache-dir", cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 jobs run, 0 already done, 0 failed" in proc.stdout
    assert "[job 6/6 done, 0 running, 0 failed]" in proc.stderr  # progress: done / running / failed
    assert "ETA" in proc.stderr and "2 job(s) at a time" in proc.stderr
    got, want = _records(out), tiny_run.records()
    assert set(got) == set(want) and len(got) == 6
    for job_id, rec in want.items():
        for key in ("metrics", "flags", "flag_evidence", "train_history", "teacher", "student", "config"):
            assert got[job_id][key] == rec[key], (job_id, key)
        assert got[job_id]["env"]["threads"] == 1
    assert proc.stderr.count("training teacher") == 2
    # the driver wrote the teacher cache, the same checkpoints as the local executor's
    trained = sorted((cache / "teachers").glob("*.pt"))
    assert [p.name for p in trained] == sorted(p.name for p in (tiny_run.cache / "teachers").glob("*.pt"))
    import torch

    for path in trained:
        mine = torch.load(path, weights_only=True)
        theirs = torch.load(tiny_run.cache / "teachers" / path.name, weights_only=True)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert (out / "leaderboard.md").is_file()

    # resume: nothing left to run, so no cluster is needed
    again = _run_ray(env, suite, out, "127.0.0.1:1")
    assert again.returncode == 0 and "0 jobs run, 6 already done" in again.stdout, again.stderr


@needs_ray
@pytest.mark.slow  # a real two-node Ray cluster
def test_a_killed_worker_is_retried_and_every_record_is_written(tmp_path, ray_cluster, tiny_teachers):
    address, cluster, env = ray_cluster
    # longer student jobs, so that one is caught running
    suite = _suite(tmp_path, **{"epochs = 2": "epochs = 12", "seeds = [1, 2]": "seeds = [1]"})
    out = tmp_path / "out"
    driver = _driver(env, suite, out, address)
    _kill_job(cluster.pid, _job_id(suite, "kd cnn-large->cnn-small seed 1"), driver)
    proc = _finish(driver)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 jobs run, 0 already done, 0 failed" in proc.stdout
    assert len(_records(out)) == 3 and not (out / "failures").exists()


@needs_ray
@pytest.mark.slow  # a real two-node Ray cluster
def test_failures_are_recorded_like_local_ones_and_a_rerun_resumes(tmp_path, ray_cluster, tiny_teachers):
    address, cluster, env = ray_cluster
    suite = _suite(tmp_path, **{"kd = {}": "kd = { temperature = 1e-300 }\npointwise = {}",  # kd diverges: NaN
                                "epochs = 2": "epochs = 12", "seeds = [1, 2]": "seeds = [1]"})
    local = tmp_path / "local"
    with _torch_threads(1):
        assert run_main("run", "--suite", suite, "--out", local, "--quiet").returncode == 1
    (diverged,) = [json.loads(p.read_text()) for p in (local / "failures").glob("*.json")]

    out = tmp_path / "out"
    driver = _driver(env, suite, out, address, "--max-retries", "0")
    _kill_job(cluster.pid, _job_id(suite, "pointwise cnn-large->cnn-small seed 1"), driver)
    proc = _finish(driver)
    assert proc.returncode == 1, proc.stderr[-3000:]
    failures = {p.stem: json.loads(p.read_text()) for p in (out / "failures").glob("*.json")}
    assert len(failures) == 2 and diverged["job_id"] in failures
    same = failures.pop(diverged["job_id"])
    assert {k: same[k] for k in ("reason", "config", "label")} == {k: diverged[k] for k in ("reason", "config",
                                                                                            "label")}
    assert (out / "failures" / same["traceback"]).is_file()
    (lost,) = failures.values()  # the killed job: no retries allowed
    assert lost["reason"].startswith("WorkerDied: the worker running the job died 1 time(s)")
    records = _records(out)
    assert len(records) == 2 and not set(records) & {diverged["job_id"], lost["job_id"]}  # failed: no record
    assert "2 jobs run, 0 already done, 2 failed" in proc.stdout

    # a re-run runs only the failed jobs; the killed one now finishes and its failure file goes
    proc = _run_ray(env, suite, out, address)
    assert proc.returncode == 1 and "1 jobs run, 2 already done, 1 failed" in proc.stdout, proc.stderr[-3000:]
    assert lost["job_id"] in _records(out)
    assert {p.stem for p in (out / "failures").glob("*.json")} == {diverged["job_id"]}


@needs_ray
@pytest.mark.slow  # a real two-node Ray cluster
def test_ctrl_c_keeps_every_finished_record(tmp_path, ray_cluster, tiny_teachers):
    address, _, env = ray_cluster
    suite = _suite(tmp_path, **{"epochs = 2": "epochs = 100"})  # quick teacher jobs, slow students
    out = tmp_path / "out"
    driver = _driver(env, suite, out, address)
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None and not list((out / "records").glob("*.json")):
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    proc = _finish(driver, timeout=60)
    assert proc.returncode not in (0, None) and "interrupted: " in proc.stderr, proc.stderr[-3000:]
    recorded = int(proc.stderr.split("interrupted: ")[1].split()[0])
    records = _records(out)
    assert 1 <= len(records) == recorded < 6  # every finished job kept, the rest cancelled
    assert not (out / "failures").exists() and not list((out / "records").glob(".*.tmp"))


@needs_ray
@pytest.mark.slow  # a real two-node Ray cluster
def test_plugins_travel_to_the_cluster_and_give_the_local_records(tmp_path, ray_cluster, tiny_teachers,
                                                                  plugin_sandbox):
    """A suite of a plugin method and a plugin architecture (test_plugin_runs.py) on the cluster: the plugin files
    delete themselves once the driver has imported them, so the workers can only have them from the run's runtime
    environment; the records equal those of the inline runner."""
    from test_plugin_runs import plugged

    address, _, env = ray_cluster
    suite = plugged(tmp_path / "user")
    files = [tmp_path / "user" / name for name in ("my_method.py", "my_arch.py")]
    for path in files:
        path.write_text("import os, pathlib\nif os.environ.get('KDBENCH_TEST_DRIVER') == '1':\n"
                        "    pathlib.Path(__file__).unlink(missing_ok=True)\n" + path.read_text())
    with _torch_threads(1):
        assert run_main("run", "--suite", suite, "--out", tmp_path / "inline", "--workers", "1",
                        "--quiet").returncode == 0
    assert all(path.is_file() for path in files)
    proc = _run_ray({**env, "KDBENCH_TEST_DRIVER": "1"}, suite, tmp_path / "ray", address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(path.exists() for path in files)  # gone before any task ran
    assert "3 jobs run, 0 already done, 0 failed" in proc.stdout
    got, want = _records(tmp_path / "ray"), _records(tmp_path / "inline")
    assert set(got) == set(want) and len(got) == 3
    for job_id, rec in want.items():
        for key in ("metrics", "flags", "train_history", "student", "config", "plugins"):
            assert got[job_id].get(key) == rec.get(key), (rec["method"], key)
