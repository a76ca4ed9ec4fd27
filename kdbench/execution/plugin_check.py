"""Before a run starts: each method of a plugin keeps the Distiller contract (methods/base.py) on a batch of the
suite's own data, so that a plugin that breaks it is one line (exit code 2, nothing written) rather than a failed
job per seed. kdbench's own methods are tested by tests/test_methods.py instead.

For every pair of the suite, the method is built as the trainer builds it, `cls(student, teachers, params, ctx)`
(untrained models of the pair's architectures), and `losses(batch)` on 8 training examples must return a
non-empty dict of scalar tensors whose sum has a gradient. A loss that becomes non-finite, or a method that moves
its teacher, shows only in training: that job fails with the reason (loop.TrainingDiverged,
frozen.TeacherChanged) and the rest of the suite goes on.
"""

from __future__ import annotations

import torch

from ..core.errors import KdbenchError
from ..data.load import load_data
from ..methods import METHODS, Batch, TrainContext
from ..models.registry import MODELS, build_model, model_input

PROBE_EXAMPLES = 8


def check_plugin_methods(suite, data_dir=None, download: bool = False) -> None:
    """Raise one KdbenchError for the first plugin method of `suite` that breaks the contract (module docstring)."""
    methods = [m for m in suite.methods if METHODS.origin(m.name).is_plugin]
    if not methods:
        return
    data = load_data(suite.data, data_dir, download)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for pair in suite.pairs:
            for run in methods:
                _probe(run, pair, data, suite.train)


def _probe(run, pair, data, train) -> None:
    cls = METHODS.get(run.name)
    where = f"method {run.name!r} ({METHODS.origin(run.name).describe()})"
    specs = cls.teacher_specs(dict(run.params), pair.teacher, run.teacher_kind, 1)
    if any(spec.arch not in MODELS for spec in specs) or pair.student not in MODELS:
        return  # a pretrained teacher from elsewhere: nothing to build it from here
    inp = model_input(data)
    ctx = TrainContext(num_classes=data.num_classes, input_shape=data.shape, epochs=train.epochs,
                       adv_eps=train.adv_eps, adv_steps=train.adv_steps, adv_step_size=train.step_size())
    x, y = data.x_train[:PROBE_EXAMPLES], data.y_train[:PROBE_EXAMPLES]
    try:
        teachers = [build_model(spec.arch, inp).eval() for spec in specs]
        distiller = cls(build_model(pair.student, inp), teachers, dict(run.params), ctx).train()
        with torch.no_grad():
            logits = [t(x) for t in teachers] if cls.uses_teacher_logits else []
        terms = distiller.losses(Batch(x, y, logits, 0.0))
    except Exception as e:  # noqa: BLE001 - whatever the plugin raises: one line naming it
        text = str(e).strip().splitlines()
        raise KdbenchError(f"{where} fails on a batch of {data.name}: {type(e).__name__}: "
                           f"{text[0] if text else ''}") from None
    if not isinstance(terms, dict) or not terms:
        raise KdbenchError(f"{where} breaks the Distiller contract: losses(batch) returned {type(terms).__name__} "
                           f"{terms!r:.60}, not a non-empty dict of named loss tensors")
    for key, value in terms.items():
        if not isinstance(value, torch.Tensor):
            raise KdbenchError(f"{where} breaks the Distiller contract: loss term {key!r} is a "
                               f"{type(value).__name__}, not a tensor")
        if value.numel() != 1:
            raise KdbenchError(f"{where} breaks the Distiller contract: loss term {key!r} has shape "
                               f"{tuple(value.shape)}, not a scalar")
    if not sum(terms.values()).requires_grad:
        raise KdbenchError(f"{where} breaks the Distiller contract: its loss terms have no gradient with respect to "
                           "the student's weights")
