"""One job, a pure function of its config: its teachers (teacher_cache.py), the distillation of its student,
the evaluation -> the record. Whoever runs it (driver.py and its executors, `kdbench reproduce`) only decides
where; the record is the same."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..core.gpu import autocast_dtype, job_gpu, place
from ..core.registry import plugin_origins
from ..data.augment import make_augmenter
from ..evaluation.evaluate import evaluate
from ..methods import METHODS, Batch, TrainContext
from ..models.registry import build_model, count_macs, count_params, model_input
from ..records.examples import pack_masks
from ..records.store import environment, utc_now
from ..suite.plugin_uses import job_uses
from ..training.frozen import teachers_kept
from ..training.loop import fit, predict_logits, seed_everything
from ..training.teacher_cache import get_teacher
from .transfer_cache import shared_examples


def _where(path: str) -> str:
    """A plugin's path as a record keeps it: relative to the working directory when it lies under it (a results
    folder committed with its suite and plugins stays valid in another checkout), else absolute."""
    full = Path(path).resolve()
    try:
        return str(full.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(full)


def train_student(job, data, teachers: list, ws) -> tuple[torch.nn.Module, list[dict]]:
    cls = METHODS.get(job.method)
    seed_everything(job.seed)
    gpu = job_gpu(job, ws.device)
    student = place(build_model(job.pair.student, model_input(data)), ws.device, gpu)
    t = job.train
    ctx = TrainContext(num_classes=data.num_classes, input_shape=data.shape, epochs=t.epochs, adv_eps=t.adv_eps,
                       adv_steps=t.adv_steps, adv_step_size=t.step_size(), adv_warmup=t.adv_warmup)
    distiller = cls(student, teachers, dict(job.params), ctx).to(ws.device)
    x, y = data.x_train, data.y_train
    augment = make_augmenter(job.data.augment, job.seed, ws.device)
    # augmented inputs differ every step: the teachers' logits are then computed per batch, not cached
    cached = [predict_logits(tm, x) for tm in teachers] if cls.uses_teacher_logits and augment is None else []

    def step(idx, progress):
        if augment is None:
            return distiller.losses(Batch(x[idx], y[idx], [c[idx] for c in cached], progress))
        xb = augment(x[idx])
        with torch.no_grad():
            logits = [tm(xb) for tm in teachers] if cls.uses_teacher_logits else []
        return distiller.losses(Batch(xb, y[idx], logits, progress))

    with teachers_kept(teachers):  # a method that changes its teachers fails its job (frozen.py)
        history = fit(distiller, distiller.trainable_parameters(), step, len(x), t.epochs, t, job.seed, ws.device,
                      amp=autocast_dtype(gpu))
    # evaluation needs gradients with respect to the inputs only: none for the weights (cheaper attacks)
    return distiller.student.eval().requires_grad_(False), history


def run_job(job, ws, progress) -> dict:
    """The record of `job`, run in the workspace `ws` (workspace.py); `progress.say` tells of teachers trained."""
    data = ws.get_data(job.data)
    specs = job.teacher_specs()
    teachers = [get_teacher(s, job, ws, progress) for s in specs]
    t0 = time.perf_counter()
    if job.is_teacher:
        model, history = teachers[0], []
        source = None
    else:
        model, history = train_student(job, data, teachers, ws)
        source = teachers[0] if teachers else None
    train_seconds = time.perf_counter() - t0
    ws.add_time("student training", 0.0 if job.is_teacher else train_seconds)

    per_example: dict = {}
    metrics, flags, evidence, timings, eval_seconds = evaluate_job_model(job, ws, model, source, specs, data,
                                                                         per_example, history)
    teacher_info = teacher_summary(job, specs, teachers, data)
    record = {
        "schema": 1,
        "job_id": job.job_id,
        "suite": job.suite,
        "role": "teacher" if job.is_teacher else "student",
        "dataset": job.data.name,
        "pair": f"{job.pair.teacher}->{job.pair.student}",
        "teacher": teacher_info,
        "student": {"arch": job.pair.teacher if job.is_teacher else job.pair.student, "params": count_params(model),
                    "macs": count_macs(model, data.shape)},
        "method": f"teacher:{job.teacher_kind}" if job.is_teacher else job.method,
        "method_params": dict(job.params),
        "trained_on": {} if job.is_teacher else METHODS.get(job.method).trains_on(dict(job.params)),
        "teacher_kind": job.teacher_kind,
        "seed": job.seed,
        "metrics": metrics,
        "flags": flags,
        "flag_evidence": evidence,
        "examples": pack_masks(per_example),
        "headline_eps": job.headline_eps,
        "train_history": history,  # each epoch's mean of each loss term
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "eval_timings": {k: round(v, 3) for k, v in timings.items()},
        "config": job.config(),
        "env": environment(ws.device),
        "created": utc_now(),
    }
    plugins = plugin_origins(job_uses(job))
    if plugins:  # the plugins whose code the job ran: file or package, where it was loaded from, full hash
        record["plugins"] = [{k: _where(v) if k == "path" else v for k, v in dataclasses.asdict(o).items() if v}
                             for o in plugins]
    if job.save_student and not job.is_teacher:
        from ..records.students import attach_weights

        attach_weights(record, model, data)
    return record


def evaluate_job_model(job, ws, model, source, specs, data, per_example: dict | None = None,
                       history: list | None = None) -> tuple:
    """`model` evaluated with `job`'s protocol (attacks, transfer from `source`, corruptions, CIFAR-C); returns
    (metrics, flags, flag evidence, timings, eval seconds) and fills `per_example` with the per-example
    correctness masks (evaluate's out-parameter). `history`: the model's training losses per epoch (evidence of
    `training-failed`). Shared by run_job and `kdbench evaluate`."""
    seed_everything(job.seed)
    timings: dict = {}
    t1 = time.perf_counter()
    transfer_cache = shared_examples(ws, job) if source is not None and job.eval.transfer else None
    metrics, flags, evidence = evaluate(model, data.x_test, data.y_test, data.num_classes, job.eval, job.seed,
                                        job.headline_eps, source=source, timings=timings,
                                        transfer_cache=transfer_cache, per_example=per_example,
                                        train_history=history)
    if job.eval.cifar_c:  # CIFAR-10-C / CIFAR-100-C, beside the synthetic corruptions
        from ..evaluation.cifar_c import evaluate_cifar_c

        t2 = time.perf_counter()
        metrics.update(evaluate_cifar_c(model, ws.corruptions_from, data, job.eval.severities, job.eval.batch_size,
                                        job.eval.cifar_c))
        timings["cifar-c"] = time.perf_counter() - t2
    eval_seconds = time.perf_counter() - t1
    for k, v in timings.items():
        ws.add_time(f"eval: {k}", v)
    return metrics, flags, evidence, timings, eval_seconds


def teacher_summary(job, specs: list, teachers: list, data) -> dict | None:
    """The record's `teacher` entry: the first teacher's arch, kind, seeds, size and clean accuracy."""
    if not teachers:
        return None
    tm = teachers[0]
    info = {"arch": specs[0].arch, "kind": specs[0].kind, "seeds": [s.seed for s in specs],
            "params": count_params(tm),
            "clean": (predict_logits(tm, data.x_test).argmax(1) == data.y_test).float().mean().item()}
    info["macs"] = count_macs(tm, data.shape)
    if job.pair.pretrained is not None:
        info["kind"] = "pretrained"
        info["pretrained"] = dataclasses.asdict(job.stand_in(specs[0]))  # the teacher described here
        if job.pair.ensemble:  # every pretrained teacher, in the order of the teachers
            info["pretrained_all"] = [dataclasses.asdict(job.stand_in(s)) for s in specs]
    return info
