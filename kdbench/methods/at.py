"""PGD adversarial training of the student alone: the teacher-free baseline every robust-distillation paper
compares with."""

from __future__ import annotations

import torch.nn.functional as F

from .adversarial import AdversarialDistiller
from .base import Batch, register_method
from .inner_attack import ATTACK_MODES


@register_method("at")
class AT(AdversarialDistiller):
    """PGD adversarial training of the student alone, no teacher (Madry et al. 2018, ICLR); a baseline.

    Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks".

    x' = argmax_{||x' - x||_inf <= eps} CE(s(x'), y)     (torchattacks PGD, uniform random start in the eps-ball)
    loss = CE(s(x'), y)
    eps, steps and step size are the suite's adv_eps, adv_steps and adv_step_size.

    Paper vs code (MadryLab/cifar10_challenge): the same objective (adversarial examples only, no clean term) and
    random start; the reference code's CIFAR-10 attack (config.json) is 10 steps of 2/255 at eps 8/255, set here
    by the suite. The reference code crafts its examples on the model built in train mode (train.py,
    `Model(mode='train')`; model.py's batch norm has `is_training=True` and updates its moving averages in place
    at every pass), so the attack runs with the student in train mode by default (`attack_mode = "train"`, its
    forward passes updating the running statistics). Other PGD-AT codes attack in eval mode (IAD's
    pre_train/AT.py, AdaAD's Madry_PGD): `attack_mode = "eval"`. The `adversarial` teacher kind attacks in eval
    mode (teachers.py).
    """

    defaults = {"attack_mode": "train"}
    choices = {"attack_mode": ATTACK_MODES}
    teacher_kind = None
    uses_teacher_logits = False

    def losses(self, batch: Batch):
        return {"adv_ce": F.cross_entropy(self.student(self.perturb(batch.x, batch.y, batch.progress)), batch.y)}
