"""Teachers: trained once per configuration and kept in the cache folder as state dicts, `<cache>/teachers/
<key>.pt` (+ `.json`, the configuration), where `key` hashes `teacher_config`. A pretrained teacher is loaded
from where it lives instead, never trained or cached."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ..core.atomic import atomic_write_bytes, atomic_write_text
from ..core.gpu import autocast_dtype, job_gpu, place
from ..core.machine import kernel_settings
from ..core.registry import plugin_ids
from ..data.augment import AUGMENTATIONS, make_augmenter
from ..data.registry import DATASETS, config_dict
from ..models.checkpoints import load_state_dict, state_dict_bytes
from ..models.registry import MODELS, build_model, model_input
from .loop import fit, seed_everything
from .teachers import TEACHER_KINDS, cache_settings, teacher_key


def teacher_config(spec, job, threads: int) -> dict:
    """What determines a trained teacher, its cache key. `threads`: the torch threads it trains on, which change
    its weights in the last bits on the CPU (a CUDA job's are set by its [gpu] settings instead), as do the CPU
    kernel settings in effect (machine.kernel_settings). The training settings are the job's teachers'
    (`Job.teacher_training`: the suite's [train], also where a method trains its students with settings of its
    own)."""
    t = job.teacher_training()
    params, kind_train = cache_settings(spec.kind, dict(spec.params), t)  # the kind's own facts (teachers.py)
    # format 2: CPU teachers train in the channels-last layout (gpu.place), which changes their last bits;
    # format 3: they train with optim.FlatOptimizer
    cfg = {"format": 3, "data": config_dict(job.data), "arch": spec.arch, "kind": spec.kind,
           "params": params, "seed": spec.seed,
           "train": {"epochs": t.teacher_epochs, "batch_size": t.batch_size, "optimizer": t.optimizer, "lr": t.lr,
                     "momentum": t.momentum, "weight_decay": t.weight_decay, "schedule": t.schedule, **kind_train}}
    if job.gpu is not None:  # trained on a GPU with these settings (mixed precision, ...)
        cfg["gpu"] = dataclasses.asdict(job.gpu)
    else:
        cfg["threads"] = threads
        kernels = kernel_settings()
        if kernels:  # pinned CPU kernels (machine.py) change the last bits too; unpinned keys stay as they were
            cfg["kernels"] = kernels
    plugins = plugin_ids([(TEACHER_KINDS, spec.kind), (MODELS, spec.arch), (DATASETS, job.data.name),
                          *((AUGMENTATIONS, a) for a in job.data.augment)])
    if plugins:  # a teacher of a plugin's kind, architecture or data: cached under the plugin's code
        cfg["plugins"] = plugins
    return cfg


def teacher_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "teachers" / f"{key}.pt"


def save_teacher(cache_dir: Path, key: str, cfg: dict, blob: bytes) -> None:
    """Put a trained teacher (`checkpoints.state_dict_bytes`) and its config in the cache, atomically."""
    path = teacher_path(cache_dir, key)
    atomic_write_bytes(path, blob)
    atomic_write_text(path.with_suffix(".json"), json.dumps(cfg, indent=1, sort_keys=True))


def train_teacher(spec, job, data, device: torch.device) -> torch.nn.Module:
    """Train the teacher `spec` of `job` on `data` now, without the cache (get_teacher caches the result)."""
    kind = TEACHER_KINDS.get(spec.kind)
    params = {**kind.defaults, **dict(spec.params)}
    seed_everything(spec.seed)
    gpu = job_gpu(job, device)
    model = place(build_model(spec.arch, model_input(data)), device, gpu)
    t = job.teacher_training()
    objective = kind.objective(model, params, t)
    x, y = data.x_train, data.y_train
    augment = make_augmenter(job.data.augment, spec.seed, device) or (lambda xb: xb)
    fit(model, list(model.parameters()), lambda idx, p: objective(augment(x[idx]), y[idx], p), len(x),
        t.teacher_epochs, t, spec.seed, device, amp=autocast_dtype(gpu))
    return model


def get_teacher(spec, job, ws, progress) -> torch.nn.Module:
    """The trained teacher `spec` of `job`: from the workspace `ws` (workspace.py), from the disk cache, or
    trained now and cached (`progress.say` tells)."""
    cfg = teacher_config(spec, job, torch.get_num_threads())  # trained here, now, if not cached
    key = teacher_key(cfg)
    if key in ws.teachers:
        return ws.teachers[key][1]
    if key in ws.teacher_errors:  # trained once already in this run and failed: fail fast, same reason
        raise ws.teacher_errors[key]
    data = ws.get_data(job.data)
    if job.pair.pretrained is not None:  # loaded from elsewhere: never trained, never cached on disk
        from .pretrained import load_pretrained

        pre = job.stand_in(spec)  # the one declared as this teacher's kind
        loaded = ws.teachers.get(("pretrained", pre))
        if loaded is None:
            t0 = time.perf_counter()
            model = place(load_pretrained(pre, model_input(data), ws.device, ws.cache_dir),
                          ws.device, job_gpu(job, ws.device))  # the layout of a trained teacher
            ws.add_time("teacher loading", time.perf_counter() - t0)
            loaded = ws.teachers[("pretrained", pre)] = (spec, model)
        ws.teachers[key] = loaded
        return loaded[1]
    path = teacher_path(ws.cache_dir, key)
    if path.is_file():
        model = place(build_model(spec.arch, model_input(data)), ws.device, job_gpu(job, ws.device))
        model.load_state_dict(load_state_dict(path, ws.device))
    else:
        t0 = time.perf_counter()
        progress.say(f"    training teacher {spec.arch} ({spec.kind}) seed {spec.seed}")
        try:
            model = train_teacher(spec, job, data, ws.device)
        except Exception as e:
            ws.teacher_errors[key] = e
            raise
        save_teacher(ws.cache_dir, key, cfg, state_dict_bytes(model))
        ws.add_time("teacher training", time.perf_counter() - t0)
    model.eval().requires_grad_(False)
    ws.teachers[key] = (spec, model)
    return model


def preload_teacher(ws, spec, job, teacher) -> None:
    """Hand `ws` the teacher `spec` of `job` (a state dict, or a loaded module for a pretrained teacher): a job
    then takes it from memory and never trains it or reads the cache."""
    if isinstance(teacher, dict):
        inp = model_input(ws.get_data(job.data))
        model = place(build_model(spec.arch, inp), ws.device, job_gpu(job, ws.device))
        model.load_state_dict(teacher)
    else:
        model = teacher.to(ws.device)
    key = teacher_key(teacher_config(spec, job, torch.get_num_threads()))
    ws.teachers[key] = (spec, model.eval().requires_grad_(False))
