"""PGD adversarial training of the student alone in the L2 norm: the teacher-free L2 baseline."""

from __future__ import annotations

import torch.nn.functional as F

from ..core.bounds import POSITIVE
from ..core.gpu import full_precision
from ..models.input_grad import ContiguousInputGrad
from .base import Batch, Distiller, register_method


@register_method("at-l2")
class ATL2(Distiller):
    """PGD adversarial training in the L2 norm, no teacher (Madry et al. 2018, ICLR); a baseline.

    Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks".

    x' = argmax_{||x' - x||_2 <= eps} CE(s(x'), y)     (torchattacks PGDL2: steps along the L2-normalised gradient,
                                                        projection onto the ball, random start inside it)
    loss = CE(s(x'), y)
    `eps` is an L2 radius in [0, 1] pixel scale (default 0.5, the L2 radius of RobustBench's CIFAR-10 L2 track and of
    the L2-trained CIFAR-10 models of MadryLab's robustness library); steps are the suite's adv_steps, the step size
    2.5 * eps / steps (Madry et al.'s rule, the suite's L-inf default as well). Every other method is trained at the
    suite's L-inf settings; this one is the option for a suite that wants an L2-trained row to compare them with.
    The attack runs with the student in eval mode, as for `at`.
    """

    defaults = {"eps": 0.5}
    bounds = {"eps": POSITIVE}
    teacher_kind = None
    uses_teacher_logits = False

    def __init__(self, student, teachers, params, ctx):
        import torchattacks
        super().__init__(student, teachers, params, ctx)
        eps, steps = self.params["eps"], max(ctx.adv_steps, 1)
        # PGDL2 flattens the input gradient with .view: contiguous whatever the student's memory format
        self.pgd = torchattacks.PGDL2(ContiguousInputGrad(student), eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                      random_start=True)

    def losses(self, batch: Batch):
        with full_precision(batch.x):
            x_adv = self.pgd(batch.x, batch.y).detach()
        return {"adv_ce": F.cross_entropy(self.student(x_adv), batch.y)}
