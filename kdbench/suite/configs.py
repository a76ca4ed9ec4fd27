"""The tables of a suite file that configure a job and a run: `[train]`, `[eval]`, `[check]`, `[executor]`,
`[save]`, as frozen dataclasses, and their validation (each bad value is one line naming it and what is allowed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..core.config import from_table
from ..core.errors import KdbenchError, choices_error
from ..core.machine import KERNEL_LEVELS
from ..core.metric_names import check_norm
from ..data.corruptions import CORRUPTIONS
from ..evaluation.attacks import ATTACKS
from ..evaluation.noise_sweep import NOISE_FAMILIES
from ..stats.rerun_noise import ALPHA
from ..training.optim import OPTIMIZERS, SCHEDULES


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # student epochs
    teacher_epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    adv_eps: float = 0.1  # eps of adversarial training and adversarial distillation
    adv_steps: int = 10
    adv_step_size: float | None = None  # default 2.5 * adv_eps / adv_steps (Madry et al. 2018)
    adv_warmup: float = 0.0  # fraction of training over which the inner attack's eps ramps from 0 to adv_eps; 0: off

    def step_size(self) -> float:
        if self.adv_step_size is not None:
            return self.adv_step_size
        return 2.5 * self.adv_eps / max(self.adv_steps, 1)


@dataclass(frozen=True)
class CertifyConfig:
    """`[eval.certify]`: certified L2 robustness by randomized smoothing (evaluation/certify.py; Cohen, Rosenfeld
    & Kolter 2019, CERTIFY): per noise level sigma, n0 selection and n estimation samples per example, a
    Clopper-Pearson lower bound at alpha; `certified-l2@<R>` at each radius R of `radii`."""

    sigma: tuple[float, ...] = (0.25,)
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    radii: tuple[float, ...] = ()  # () -> 0 and every radius of eval.eps_l2
    skip: int = 1  # certify every skip-th test example (the paper: every 20th of CIFAR-10's 10,000)
    batch_size: int = 1000  # noisy copies per forward pass


@dataclass(frozen=True)
class EvalConfig:
    attacks: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "apgd-dlr")
    eps: tuple[float, ...] = (0.05, 0.1, 0.2)
    pgd_steps: int = 20
    pgd_step_ratio: float = 0.25  # PGD step size = ratio * eps
    apgd_steps: int = 50
    square_queries: int = 1000
    transfer: bool = True  # PGD examples crafted on the teacher, evaluated on the student
    sweep_eps: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
    corruptions: tuple[str, ...] = ("gaussian_noise",)
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    # noise-severity sweeps (noise_sweep.py): families and severities f in (0, 1]; `noise-auc/<family>`
    noise_families: tuple[str, ...] = ("gaussian", "impulse", "blur", "contrast")
    noise_levels: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    sanity: bool = True
    batch_size: int = 1024
    # CIFAR-10-C / CIFAR-100-C corruptions read from `--corruptions-from DIR` (cifar_c.py): that flag fills in
    # every corruption file of its folder, so records with and without them have different job ids. A suite
    # file may name them to require the folder.
    cifar_c: tuple[str, ...] = ()
    # the L2 threat model: radii of the attacks whose entry has norm "l2" (`pgd-l2`, ...), in [0, 1] pixel scale;
    # the worst case `robust-l2@<radius>` and the leaderboard's L2 column at `headline_eps_l2`
    eps_l2: tuple[float, ...] = ()
    headline_eps_l2: float | None = None  # None: 0.5 if it is one of eps_l2, else the middle radius
    certify: CertifyConfig | None = None  # randomized smoothing, opt-in (`[eval.certify]`)


@dataclass(frozen=True)
class ExecutorConfig:
    """`[executor]`: what one job gets, on this machine or a Ray cluster (`run --executor ray`). Not part of job
    ids. `cpus_per_job` is the torch threads of a job with either executor; they change its numbers in the last
    bits, so records name them (`env.threads`) and CPU teachers are cached per thread count. `gpus_per_job` (Ray
    only) may be a fraction (0.5: two jobs share a GPU). `kernels` pins the CPU kernels (records name them in
    `env.cpu.kernels`, and CPU teachers are cached per setting)."""

    cpus_per_job: int = 1  # CPUs per job: the job runs torch on that many threads
    gpus_per_job: float = 0.0
    max_retries: int = 2  # re-runs of a job whose worker process or node died, before it counts as failed
    kernels: str = "native"  # CPU kernels of torch, oneDNN and MKL: "native" (the CPU's best) or "avx2" (machine.py)


@dataclass(frozen=True)
class SaveConfig:
    """`[save]`: what a run keeps besides its records. `students`: each student's weights as
    students/<job_id>.pt beside its record (docs/models.md); off for grids too large to keep. Not part of job
    ids: it changes no number."""

    students: bool = True


@dataclass(frozen=True)
class CheckConfig:
    """The `[check]` table of a suite file (check.py reads it); the command line overrides it."""

    k: float = 3.0  # fallback tolerance (baselines without per-example data): k standard errors of the seeds
    floor: float = 0.02
    tolerance: dict = field(default_factory=dict)  # metric name or glob -> absolute tolerance
    alpha: float = ALPHA  # family-wise error of a check across machines
    drop: float = 0.05  # across machines: the drop every checked metric should detect (those that cannot are listed)


def check_eps(value: float, where: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise KdbenchError(f"{where} = {value!r} is outside [0, 1] (eps is in [0, 1] pixel scale)")
    return value


def check_names(names, registry, where: str):
    for name in names:
        if name not in registry:
            raise choices_error(registry.kind, name, registry.names()) from None


def parse_train(table, where: str = "train", base: TrainConfig | None = None) -> TrainConfig:
    """The `[train]` table, validated. With `base`, the table holds only the fields that replace `base`'s (a
    method's own training settings, `where` = "methods.<name>.train"); the result is validated as a whole."""
    train = from_table(TrainConfig, table, where)
    if base is not None:
        train = dataclasses.replace(base, **{k: getattr(train, k) for k in table or {}})
    if train.optimizer not in OPTIMIZERS:
        raise KdbenchError(f"{where}.optimizer {train.optimizer!r} is unknown; choose from: {', '.join(OPTIMIZERS)}")
    if train.schedule not in SCHEDULES:
        raise KdbenchError(f"{where}.schedule {train.schedule!r} is unknown; choose from: {', '.join(SCHEDULES)}")
    for key in ("epochs", "teacher_epochs", "batch_size"):
        if getattr(train, key) < 1:
            raise KdbenchError(f"{where}.{key} must be >= 1, got {getattr(train, key)!r}")
    if train.adv_steps < 0:
        raise KdbenchError(f"{where}.adv_steps must be >= 0, got {train.adv_steps!r}")
    if not train.lr > 0:
        raise KdbenchError(f"{where}.lr must be > 0, got {train.lr!r}")
    check_eps(train.adv_eps, f"{where}.adv_eps")
    if not 0.0 <= train.adv_warmup <= 1.0:
        raise KdbenchError(f"{where}.adv_warmup = {train.adv_warmup!r} is outside [0, 1] (the fraction of training "
                           f"over which the inner attack's eps ramps up to adv_eps; 0 is off)")
    return train


def parse_eval(table) -> EvalConfig:
    """The `[eval]` table, validated: registered attacks, corruptions and noise families; eps in [0, 1]; L2 radii
    > 0 with an L2 attack to use them; the certify table's settings in range. (That an L2 radius fits the images,
    at most their diagonal, is checked with the data: `check_l2_radii`.)"""
    ev = from_table(EvalConfig, table, "eval")
    check_names(ev.attacks, ATTACKS, "eval.attacks")
    check_names(ev.corruptions, CORRUPTIONS, "eval.corruptions")
    check_names(ev.noise_families, NOISE_FAMILIES, "eval.noise_families")
    for f in ev.noise_levels:
        if isinstance(f, bool) or not 0.0 < f <= 1.0:
            raise KdbenchError(f"eval.noise_levels: level {f!r} is outside (0, 1]")
    for e in ev.eps:
        check_eps(e, "eval.eps")
    for e in ev.sweep_eps:
        check_eps(e, "eval.sweep_eps")
    for s in ev.severities:
        if s not in (1, 2, 3, 4, 5):
            raise KdbenchError(f"eval.severities: severity {s!r} is invalid; choose from: 1, 2, 3, 4, 5")
    if not ev.eps:
        raise KdbenchError("eval.eps must list at least one eps")
    for key in ("pgd_steps", "apgd_steps", "square_queries", "batch_size"):
        if getattr(ev, key) < 1:
            raise KdbenchError(f"eval.{key} must be >= 1, got {getattr(ev, key)!r}")
    return _parse_l2(ev)


def _parse_l2(ev: EvalConfig) -> EvalConfig:
    """The L2 settings of `ev`, validated, with the L2 headline radius and the certified radii filled in."""
    l2_attacks = [a for a in ev.attacks if ATTACKS.get(a).norm == "l2"]
    for r in ev.eps_l2:
        if not r > 0:
            raise KdbenchError(f"eval.eps_l2: radius {r!r} must be > 0 (an L2 radius in [0, 1] pixel scale)")
    if l2_attacks and not ev.eps_l2:
        raise KdbenchError(f"eval.attacks names L2 attacks ({', '.join(l2_attacks)}) but eval.eps_l2 names no radius")
    if ev.eps_l2 and not l2_attacks:
        l2 = [n for n in ATTACKS.names() if ATTACKS.get(n).norm == "l2"]
        raise KdbenchError(f"eval.eps_l2 is set but eval.attacks has no L2 attack; add one of: {', '.join(l2)}")
    headline = ev.headline_eps_l2
    if ev.eps_l2:
        if headline is None:
            headline = 0.5 if 0.5 in ev.eps_l2 else sorted(ev.eps_l2)[len(ev.eps_l2) // 2]
        if headline not in ev.eps_l2:
            raise KdbenchError(f"eval.headline_eps_l2 {headline!r} must be one of eval.eps_l2: "
                               f"{', '.join(map(str, ev.eps_l2))}")
    elif headline is not None:
        raise KdbenchError("eval.headline_eps_l2 is set but eval.eps_l2 names no radius")
    c = ev.certify
    if c is not None:
        if not c.sigma or any(not s > 0 for s in c.sigma):
            raise KdbenchError(f"eval.certify.sigma {list(c.sigma)!r}: every noise level must be > 0")
        for key in ("n0", "n", "skip", "batch_size"):
            if getattr(c, key) < 1:
                raise KdbenchError(f"eval.certify.{key} must be >= 1, got {getattr(c, key)!r}")
        if not 0.0 < c.alpha < 1.0:
            raise KdbenchError(f"eval.certify.alpha {c.alpha!r} is outside (0, 1)")
        radii = c.radii or (0.0, *sorted(ev.eps_l2))  # radius 0: the smoothed classifier's accuracy
        for r in radii:
            if not r >= 0:
                raise KdbenchError(f"eval.certify.radii: radius {r!r} must be >= 0")
        c = dataclasses.replace(c, radii=tuple(radii))
    return dataclasses.replace(ev, headline_eps_l2=headline, certify=c)


def check_l2_radii(ev: EvalConfig, shape: tuple[int, ...]) -> None:
    """Every L2 radius of `ev` (attacks and certified radii) at most the diagonal of the [0, 1] image cube,
    sqrt(C * H * W): a larger ball holds every image, so the number means nothing."""
    diagonal = math.sqrt(math.prod(shape))
    for where, radii in (("eval.eps_l2", ev.eps_l2), ("eval.certify.radii", ev.certify.radii if ev.certify else ())):
        for r in radii:
            if r > diagonal:
                raise KdbenchError(f"{where}: radius {r!r} is larger than the image diagonal sqrt(C*H*W) = "
                                   f"{diagonal:.4g} for images of shape {'x'.join(map(str, shape))}; valid: "
                                   f"(0, {diagonal:.4g}]")


def parse_check(table) -> CheckConfig:
    """The `[check]` table, validated."""
    check = from_table(CheckConfig, table, "check")
    for key, tol in check.tolerance.items():
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise KdbenchError(f"check.tolerance.{key} must be a number >= 0, got {tol!r}")
        try:
            check_norm(key)
        except ValueError as e:
            raise KdbenchError(f"check.tolerance.{key}: {e}") from None
    return validate_check(check, "check.")


def validate_check(check: CheckConfig, where: str) -> CheckConfig:
    """The numbers of a `[check]` table (or of check's flags, `where` = "--") in range."""
    for key, ok, valid in (("k", check.k >= 0, ">= 0"), ("floor", check.floor >= 0, ">= 0"),
                           ("alpha", 0 < check.alpha < 1, "in (0, 1)"),
                           ("drop", 0 < check.drop <= 1, "in (0, 1], accuracy units (0.05 = 5 points)")):
        if not ok:
            raise KdbenchError(f"{where}{key} must be {valid}, got {getattr(check, key)!r}")
    return check


def check_executor(cfg: ExecutorConfig, where: str = "executor.") -> ExecutorConfig:
    """Resource settings in range (`where` names them in errors: the suite's table or the CLI's flags)."""
    if cfg.cpus_per_job < 1:
        raise KdbenchError(f"{where}cpus_per_job must be an integer >= 1, got {cfg.cpus_per_job!r}")
    if not cfg.gpus_per_job >= 0 or (cfg.gpus_per_job > 1 and cfg.gpus_per_job != int(cfg.gpus_per_job)):
        raise KdbenchError(f"{where}gpus_per_job must be >= 0 (a fraction of one GPU, or a whole number), "
                           f"got {cfg.gpus_per_job!r}")
    if cfg.max_retries < 0:
        raise KdbenchError(f"{where}max_retries must be >= 0, got {cfg.max_retries!r}")
    if cfg.kernels not in KERNEL_LEVELS:
        raise KdbenchError(f"{where}kernels {cfg.kernels!r} is unknown; choose from: {', '.join(KERNEL_LEVELS)}")
    return cfg
