"""`kdbench evaluate`: any model through a suite's evaluation protocol, recorded as a leaderboard row.

The model comes from one of:
- `--record R`: a kdbench record. A student's saved weights (students.py) or a teacher (from the teacher cache,
  or its checkpoint / RobustBench entry), evaluated with *that record's* protocol: its dataset, attacks, eps,
  seed, transfer teacher and torch threads. On the same machine the metrics equal the record's exactly.
- `--checkpoint F [--arch A] [--normalize ...]`: a state dict of a registered architecture, loaded by the same
  code as checkpoint teachers (pretrained.py: unwrapping, `weights_only=True`, `normalize`). `--arch` may be
  left out for a kdbench file that says its own: a saved student (its record) or a cached teacher (its .json).
- `--robustbench ID`: a RobustBench model-zoo entry (optional extra `kdbench[robustbench]`).
- `--model FILE.py:FACTORY | module:factory | FILE.pt2` (with `--checkpoint` for separate weights), or an
  `nn.Module` in memory (`kdbench.evaluate`): a model of the user's own code, any architecture (user_models.py).

For `--checkpoint`, `--robustbench` and the user's models the protocol is the suite's (`--suite`): its dataset,
`[eval]`, headline eps, the seeds `--seeds` (default: the suite's first seed); the transfer attack is crafted on the
suite's first reference teacher (trained and cached like a run's, unless `--no-transfer`).

The record has role `external`, method = `--name`; the weights evaluated are kept as students/<job_id>.pt
(RobustBench models: none, the zoo holds them). A user's model is identified by the hash of its weights and of
its code file (a factory's, a .pt2 program's). Every input is checked and the model loaded and probed on the
dataset's inputs before anything is written: a bad input is one line and exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import KdbenchError
from ..core.identity import digest
from ..records.examples import pack_masks
from ..training.pretrained import PretrainedTeacher, file_sha256

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass(frozen=True)
class Target:
    """What `kdbench evaluate` evaluates, and with which protocol."""

    name: str
    model: PretrainedTeacher  # where the model comes from (checkpoint file or RobustBench entry)
    jobs: tuple  # one protocol job per seed (data, eval, headline eps, seed; its teacher is the transfer source)
    transfer: bool  # craft transfer examples on the protocol job's teacher
    threads: int | None  # torch threads (a record's own), None: as set
    origin: dict  # what the record says about the model's provenance
    module: nn.Module | None = None  # a user's model, built already (user_models.py); None: load `model`
    code_sha256: str = ""  # the hash of a user's model's code (its factory file, its .pt2 program)


def read_record(path: Path) -> dict:
    from ..records.store import validate_record

    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KdbenchError(f"cannot read record {str(path)!r}: {e}") from None
    problem = validate_record(record) or (None if "config" in record else "it stores no job config")
    if problem:
        raise KdbenchError(f"{str(path)!r} is not a kdbench record: {problem}")
    return record


def infer_arch(path: Path) -> str:
    """The architecture a kdbench weights file says it has: a saved student's record (../records/<id>.json) or a
    cached teacher's config (<key>.json)."""
    for meta in (path.parent.parent / "records" / f"{path.stem}.json", path.with_suffix(".json")):
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        arch = (doc.get("student") or {}).get("arch") if "student" in doc else doc.get("arch")
        if isinstance(arch, str):
            return arch
    raise KdbenchError(f"--checkpoint {str(path)!r}: give its architecture with --arch (see `kdbench list models`)")


def from_record(path: Path, name: str, cache_dir: Path) -> Target:
    """The model of a record, with that record's protocol."""
    from ..records.students import verified_weights
    from ..suite.jobs import job_from_config
    from ..training.teacher_cache import teacher_config, teacher_path
    from ..training.teachers import teacher_key

    from .reproduce import load_record_plugins

    record = read_record(path)
    if record["role"] == "external":
        raise KdbenchError(f"{str(path)!r} is an external record: evaluate its own --checkpoint or --robustbench")
    load_record_plugins(record)  # a plugin's architecture, dataset or attacks
    job = job_from_config(record["config"], record["suite"])
    threads = record.get("env", {}).get("threads")
    threads = threads if isinstance(threads, int) and threads >= 1 else None
    arch = record["student"]["arch"]
    if record["role"] == "student":
        weights = verified_weights(Path(path).resolve().parent.parent, record)
        model = PretrainedTeacher("checkpoint", str(weights), arch, file_sha256(weights))
    elif job.pair.pretrained is not None:
        model = job.pair.pretrained
    else:
        spec = job.teacher_specs()[0]
        weights = teacher_path(cache_dir, teacher_key(teacher_config(spec, job, threads or torch.get_num_threads())))
        if not weights.is_file():
            raise KdbenchError(f"the teacher of {str(path)!r} is not in the teacher cache {str(cache_dir)!r}: run its "
                               "suite with that --cache-dir, or give --cache-dir")
        model = PretrainedTeacher("checkpoint", str(weights), arch, file_sha256(weights))
    origin = {"record": record["job_id"], "suite": record["suite"], "role": record["role"],
              "method": record["method"], "method_params": record.get("method_params", {}),
              "teacher": record.get("teacher")}
    return Target(name, model, (job,), not job.is_teacher, threads, origin)


def from_suite(suite, name: str, model: PretrainedTeacher, seeds, transfer: bool, cuda: bool, user=None) -> Target:
    """A model from elsewhere with the suite's protocol: one job per seed, whose teacher (the suite's first
    reference teacher) is the transfer source. `cuda`: evaluated on a GPU, with the suite's [gpu] settings.
    `user`: a model of the user's code (user_models.UserModel), which `model` then describes."""
    jobs = suite.jobs(cuda)
    refs = [j for j in jobs if j.is_teacher]
    base = refs[0] if refs else jobs[0]
    picked = []
    for seed in seeds or suite.seeds[:1]:
        same = [j for j in refs if j.seed == seed and j.pair == base.pair and j.teacher_kind == base.teacher_kind]
        picked.append(same[0] if same else dataclasses.replace(base, seed=seed))
    return Target(name, model, tuple(picked), transfer and bool(refs) and suite.eval.transfer, None,
                  {"source": model.source, "ref": model.ref}, user.module if user else None,
                  user.code_sha256 if user else "")


def user_model_target(suite, name: str, user, seeds, transfer: bool, cuda: bool) -> Target:
    """The Target of a model of the user's code (`--model`, `kdbench.evaluate`) with the suite's protocol."""
    from .user_models import tensors_sha256

    described = PretrainedTeacher(user.source, user.ref, user.arch, tensors_sha256(user.module), normalize="")
    return from_suite(suite, check_name(name), described, seeds, transfer, cuda, user)


def checkpoint_model(path: Path, arch: str | None, normalize: str) -> PretrainedTeacher:
    from ..models.registry import MODELS
    from ..training.pretrained import NORMALIZE

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise KdbenchError(f"--checkpoint: file {str(path)!r} does not exist")
    arch = arch or infer_arch(path)
    MODELS.check(arch)
    if normalize not in NORMALIZE:
        raise KdbenchError(f"--normalize {normalize!r} is unknown; choose from: {', '.join(NORMALIZE)}")
    return PretrainedTeacher("checkpoint", str(path), arch, file_sha256(path), normalize)


def robustbench_model(model_id: str, dataset: str, threat_model: str) -> PretrainedTeacher:
    from ..training.pretrained import parse_teacher_table

    return parse_teacher_table({"robustbench": model_id, "threat_model": threat_model}, "--robustbench", Path.cwd(),
                               dataset)


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise KdbenchError(f"--name {name!r} must be 1-64 letters, digits, '.', '_', '+' or '-'")
    return name


def _classes_of(pre: PretrainedTeacher, arch_model, device) -> int | None:
    """The class count a checkpoint's last linear layer predicts (None when it cannot tell)."""
    from torch import nn

    from ..training.pretrained import _unwrap, read_checkpoint

    heads = [n for n, m in arch_model.named_modules() if isinstance(m, nn.Linear)]
    if pre.source != "checkpoint" or not heads:
        return None
    state = _unwrap(read_checkpoint(Path(pre.ref), "cpu"), pre.ref)
    weight = state.get(f"{heads[-1]}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def load_model(pre: PretrainedTeacher, data, device, cache_dir: Path, gpu, module=None) -> torch.nn.Module:
    """`pre` loaded for `data` (or a copy of the user's `module`, which stays as it is) and placed like a trained
    model, after checking that it fits the dataset: its class count, and a forward pass on two test inputs that
    must give (2, classes) logits."""
    from ..core.gpu import place
    from ..models.registry import build_model, model_input
    from ..training.pretrained import load_pretrained

    inp = model_input(data)
    what = f"dataset {data.name!r} (inputs {tuple(data.shape)}, {data.num_classes} classes)"
    if pre.source == "checkpoint":
        classes = _classes_of(pre, build_model(pre.arch, inp), device)
        if classes is not None and classes != data.num_classes:
            raise KdbenchError(f"checkpoint {pre.ref!r} predicts {classes} classes, but {what}")
    try:
        model = load_pretrained(pre, inp, device, cache_dir) if module is None else \
            copy.deepcopy(module).to(device).eval().requires_grad_(False)
    except KdbenchError as e:
        raise KdbenchError(f"{e}; evaluated on {what}") from None
    model = place(model, device, gpu).eval().requires_grad_(False)
    try:
        with torch.no_grad():
            out = model(data.x_test[:2])
    except Exception as e:  # noqa: BLE001 - any failure of the forward pass: the model does not take these inputs
        raise KdbenchError(f"the model does not take the inputs of {what}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if tuple(out.shape) != (2, data.num_classes):
        raise KdbenchError(f"the model gives logits of shape {tuple(out.shape[1:])} per input, but {what}")
    return model


def external_job_id(target: Target, job, weights_sha: str) -> str:
    from ..data.registry import config_dict
    from ..suite.jobs import PROTOCOL

    blob = {"protocol": PROTOCOL, "external": {"name": target.name, "source": target.model.source,
                                               "ref": target.model.ref if target.model.source == "robustbench" else "",
                                               "arch": target.model.arch, "normalize": target.model.normalize,
                                               "weights": weights_sha},
            "data": config_dict(job.data), "eval": dataclasses.asdict(job.eval), "headline_eps": job.headline_eps,
            "seed": job.seed, "transfer": job.config() if target.transfer else None,
            "threads": torch.get_num_threads()}
    if target.code_sha256:  # a user's model: its code too
        blob["external"]["code"] = target.code_sha256
    return digest(blob)


def target_from_args(args, device, cache_dir: Path) -> Target:
    """The Target of `kdbench evaluate`'s arguments (--record, or --checkpoint / --robustbench with --suite)."""
    name = check_name(args.name)
    if args.record is None and args.robustbench is None and args.model is None and args.checkpoint is None:
        raise KdbenchError("evaluate needs the model: one of --record, --checkpoint, --model or --robustbench")
    if args.checkpoint is not None and (args.record is not None or args.robustbench is not None):
        raise KdbenchError("--checkpoint goes alone (a registered architecture, --arch) or with --model, not with "
                           + ("--record" if args.record is not None else "--robustbench"))
    if args.model is not None and args.arch:
        raise KdbenchError("--arch does not apply to --model (the model is built by its own code)")
    if args.record is not None:
        given = [f for f, v in (("--suite", args.suite), ("--seeds", args.seeds), ("--arch", args.arch)) if v]
        if given:
            raise KdbenchError(f"{', '.join(given)} do not apply to --record (it is evaluated with its own protocol)")
        return from_record(args.record, name, cache_dir)
    from ..evaluation.cifar_c import with_cifar_c
    from ..suite.load import load_suite, with_overrides

    suite = with_cifar_c(with_overrides(load_suite(args.suite or "robustness"), None, args.seeds),
                         args.corruptions_from)
    if args.model is not None:
        from .user_models import from_spec

        user = from_spec(args.model, args.checkpoint)
        return user_model_target(suite, name, user, args.seeds, not args.no_transfer, device.type == "cuda")
    if args.checkpoint is not None:
        model = checkpoint_model(args.checkpoint, args.arch, args.normalize)
    else:
        model = robustbench_model(args.robustbench, suite.data.name, args.threat_model)
    return from_suite(suite, name, model, args.seeds, not args.no_transfer, device.type == "cuda")


def _model_facts(target: Target) -> dict:
    """The record's `external.model`: where the evaluated model came from."""
    facts = {k: v for k, v in dataclasses.asdict(target.model).items() if v}
    return {**facts, "code_sha256": target.code_sha256} if target.code_sha256 else facts


def evaluate_target(target: Target, out: Path, device, cache_dir: Path, data_dir=None, download: bool = False,
                    corruptions_from=None, quiet: bool = False, found: list | None = None) -> list[dict]:
    """Evaluate `target` under each of its protocol jobs and write one `external` record per job into `out`
    (with the weights evaluated, students.py); a job whose record is there already is skipped (and appended to
    `found`). Returns the records written. Nothing is written before the model has loaded and fit the dataset."""
    from ..core.gpu import job_gpu
    from ..models.registry import count_macs, count_params
    from ..records.store import environment, load_records, utc_now
    from ..records.students import attach_weights
    from ..training.teacher_cache import get_teacher
    from .job import evaluate_job_model, teacher_summary
    from .run_output import record_result
    from .run_progress import Progress
    from .safety import check_writable, results_lock
    from .workspace import Workspace, torch_threads

    progress = Progress(len(target.jobs), quiet)
    ws = Workspace(device, Path(cache_dir), data_dir=data_dir, download=download, corruptions_from=corruptions_from)
    written = []
    with torch_threads(target.threads):
        first = target.jobs[0]
        data = ws.get_data(first.data)
        model = load_model(target.model, data, device, ws.cache_dir, job_gpu(first, device), target.module)
        weights_sha = target.model.sha256 or f"robustbench:{target.model.ref}"
        existing = load_records(out)[0] if (Path(out) / "records").is_dir() else []
        facts = _model_facts(target)
        for rec in existing:
            if rec["role"] == "external" and rec["method"] == target.name and \
                    (rec.get("external") or {}).get("model") != facts:
                raise KdbenchError(f"--name {target.name!r} is taken in {str(out)!r} by another model "
                                   f"({(rec.get('external') or {}).get('model', {}).get('ref')}); choose another name")
        done = {r["job_id"]: r for r in existing}
        check_writable(out, "results folder")
        for i, job in enumerate(target.jobs, start=1):
            job_id = external_job_id(target, job, weights_sha)
            progress.job(i, f"evaluate {target.name} seed {job.seed}")
            if job_id in done:
                progress.say(f"    already evaluated: {job_id}")
                if found is not None:
                    found.append(done[job_id])
                continue
            specs = job.teacher_specs()[:1] if target.transfer else []
            teachers = [get_teacher(s, job, ws, progress) for s in specs]
            per_example: dict = {}
            metrics, flags, evidence, timings, eval_seconds = evaluate_job_model(
                job, ws, model, teachers[0] if teachers else None, specs, ws.get_data(job.data), per_example)
            record = {
                "schema": 1, "job_id": job_id, "suite": job.suite, "role": "external", "dataset": job.data.name,
                "pair": "external", "teacher": target.origin.get("teacher"),
                "transfer_source": teacher_summary(job, specs, teachers, data),
                "student": {"arch": target.model.arch or target.model.display_name(), "params": count_params(model),
                            "macs": count_macs(model, data.shape)},
                "method": target.name, "method_params": {}, "teacher_kind": None, "seed": job.seed,
                "metrics": metrics, "flags": flags, "flag_evidence": evidence, "examples": pack_masks(per_example),
                "headline_eps": job.headline_eps, "train_history": [], "train_seconds": 0.0, "eval_seconds": round(eval_seconds, 3),
                "eval_timings": {k: round(v, 3) for k, v in timings.items()},
                "external": {"model": facts, "origin": target.origin, "protocol_job": job.config()},
                "config": {"protocol": job.config()["protocol"], "external": facts, "name": target.name,
                           "protocol_job": job.config()},
                "env": environment(device), "created": utc_now(),
            }
            if target.model.source != "robustbench":
                attach_weights(record, model, data)
            with results_lock(out):
                record_result(out, record)
            written.append(record)
    return written
