"""The Ray cluster behind `run --executor ray`: checking the executor's inputs, connecting (or starting a Ray
instance on this machine), what the cluster has room for, the runtime environment that carries the plugins to
the workers, and what a failed task's error means."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import KdbenchError
from ..suite.configs import ExecutorConfig


class WorkerDied(RuntimeError):
    """The worker process or node running a job died more often than `max_retries` allows."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise KdbenchError("--executor ray needs Ray: pip install 'kdbench[ray]'") from None
    return ray


def check_device(device_name: str, res: ExecutorConfig) -> None:
    """The device a job runs on follows its resources: CUDA when it reserves a GPU, else the CPU."""
    if device_name not in ("auto", "cpu", "cuda"):
        hint = "; Ray picks the GPU of each job: use --device cuda" if device_name.startswith("cuda:") else ""
        raise KdbenchError(f"device {device_name!r} cannot be used with --executor ray; choose from: auto, cpu, "
                           f"cuda{hint}")
    if device_name == "cuda" and res.gpus_per_job == 0:
        raise KdbenchError("--device cuda with --executor ray needs a GPU per job: gpus_per_job > 0 "
                           "(suite [executor] table or --gpus-per-job)")
    if device_name == "cpu" and res.gpus_per_job > 0:
        raise KdbenchError(f"--device cpu reserves no GPU, but gpus_per_job is {res.gpus_per_job:g}; "
                           "drop one of them")


def connect(ray, address: str | None, runtime_env: dict | None = None) -> bool:
    """Connect to the cluster at `address`, or start a Ray instance on this machine, with `runtime_env` for every
    task of the run (plugin_runtime_env). True when this call initialised Ray (and so shuts it down at the end)."""
    if ray.is_initialized():
        return False
    if address and address != "auto":
        _check_reachable(address)
    kwargs = {"logging_level": "WARNING", "configure_logging": True}
    from ..core.machine import kernel_settings

    runtime_env = dict(runtime_env or {})
    if kernel_settings():  # pinned CPU kernels (machine.py): the workers read them before torch first runs
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **kernel_settings()}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new instance, even when `ray start` left one running on this machine
            ray.init(address="local", include_dashboard=False, **kwargs)
    except ConnectionError as e:
        raise KdbenchError(f"cannot connect to the Ray cluster at {address!r}: {str(e).splitlines()[0]}") from None
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """One clear error now for a head that is not there (Ray itself would retry for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        return
    if not sep or not port.isdigit() or not host:
        raise KdbenchError(f"--address {address!r} must be HOST:PORT (the head's GCS port, 6379 unless "
                           "`ray start --head --port` said otherwise) or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise KdbenchError(f"cannot connect to the Ray cluster at {address!r}: {e.strerror or e}; start it with "
                           f"`ray start --head --port {port}` on {host}") from None


def plugin_runtime_env(folder: Path) -> dict | None:
    """Ray's runtime environment that carries this process's plugins (core/plugins.py) to every worker of the run
    (Ray takes local files at `ray.init` only), so that a node without their files runs their jobs: each plugin
    file, written into `folder` as `<its module>.py` from the bytes that were hashed, and each module plugin's
    source (its package folder or file), as `py_modules`. None when there is no plugin."""
    from ..core.plugins import loaded

    modules = []
    for plugin in loaded():
        if plugin.origin.kind == "file":
            path = Path(folder) / f"{plugin.module}.py"
            path.write_bytes(plugin.code)
            modules.append(str(path))
        elif plugin.origin.path:
            modules.append(plugin.origin.path)
    return {"py_modules": modules} if modules else None


def fits_somewhere(ray, res: ExecutorConfig) -> bool:
    for node in ray.nodes():
        have = node.get("Resources", {}) if node.get("Alive") else {}
        if have.get("CPU", 0) >= res.cpus_per_job and have.get("GPU", 0) >= res.gpus_per_job:
            return True
    return False


def slots(ray, res: ExecutorConfig) -> int:
    """How many jobs the cluster runs at once (for the progress line)."""
    n = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            k = int(have.get("CPU", 0) // res.cpus_per_job)
            if res.gpus_per_job > 0:
                k = min(k, int(have.get("GPU", 0) // res.gpus_per_job))
            n += k
    return max(n, 1)


def failure(ray, error: BaseException, retries: int) -> tuple[BaseException, str | None]:
    """(the error to report, its remote traceback) for an exception from ray.get."""
    from ray.exceptions import NodeDiedError, RayTaskError, WorkerCrashedError

    if isinstance(error, RayTaskError) and isinstance(error.cause, BaseException) and not isinstance(
            error.cause, ray.exceptions.RayError):
        return error.cause, str(error)
    if isinstance(error, RayTaskError) and isinstance(error.cause, BaseException):
        error = error.cause
    if isinstance(error, (WorkerCrashedError, NodeDiedError)):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return WorkerDied(f"the worker running the job died {retries + 1} time(s), retries exhausted "
                          f"({type(error).__name__}: {first})"), str(error)
    return error, str(error)
