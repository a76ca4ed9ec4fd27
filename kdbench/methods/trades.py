"""TRADES: adversarial training that trades clean accuracy for robustness through a KL smoothness term.

Used twice: as the teacher-free baseline method `trades` (the student trained alone) and as the teacher kind
`trades` (teachers.py), the kind of teacher the RSLAD and MTARD papers distil from.

The inner maximisation is torchattacks' TPGD, which is TRADES's own attack: x' starts at x + 0.001 * N(0, I)
and takes `steps` signed-gradient steps of `step_size` on KL(softmax(f(x)) || softmax(f(x'))) (summed over the
batch), projected onto the eps-ball and [0, 1], with the model in eval mode (torchattacks switches to eval for
the attack and restores the training mode afterwards), as the reference code does (trades.py, `model.eval()`
before the attack).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.bounds import NON_NEGATIVE
from ..core.gpu import full_precision
from .base import KL_REDUCTIONS, Batch, Distiller, kl_soft, register_method
from .inner_attack import ATTACK_MODES, set_attack_mode, warm_up

TRADES_BETA = 6.0  # 1/lambda = 6: the paper's CIFAR-10 setting and its released models


def trades_attack(model: nn.Module, eps: float, step_size: float, steps: int,
                  mode: str = "eval") -> torchattacks.TPGD:
    """TRADES's inner maximisation of KL(f(x) || f(x')) on `model` (torchattacks TPGD), with the model in `mode`
    during the attack (inner_attack.ATTACK_MODES)."""
    import torchattacks
    attack = torchattacks.TPGD(model, eps=eps, alpha=step_size, steps=steps)
    set_attack_mode(attack, mode)
    return attack


def trades_terms(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor, beta: float,
                 reduction: str = "batchmean") -> dict[str, torch.Tensor]:
    """CE(f(x), y) + beta * KL(softmax(f(x)) || softmax(f(x'))), the KL reduced as kl_soft's `reduction` says;
    the gradient flows through both f(x) and f(x'), as in the paper's objective and reference code."""
    with full_precision(x):  # the attack in float32 even when the step runs under autocast (GPU)
        x_adv = attack(x).detach()
    logits = model(x)
    return {"ce": F.cross_entropy(logits, y),
            "kl_adv": beta * kl_soft(model(x_adv), F.softmax(logits, dim=1), reduction=reduction)}


@register_method("trades")
class TRADES(Distiller):
    """TRADES of the student alone, no teacher, beta = 6 (Zhang et al. 2019, ICML); a baseline.

    Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy".

    x' = argmax_{||x' - x||_inf <= eps} KL(softmax(s(x)) || softmax(s(x')))     (TPGD, start x + 0.001 N(0, I))
    loss = CE(s(x), y) + beta * KL(softmax(s(x)) || softmax(s(x'))),  beta = 6
    eps, steps and step size are the suite's adv_eps, adv_steps and adv_step_size.

    Paper vs code (yaodongyu/TRADES, trades.py): the same objective, KL summed over classes and averaged over
    the batch (`nn.KLDivLoss(size_average=False)` / batch size: `kl_reduction = "batchmean"`, the default). The
    reference code also runs the attack in eval mode (`attack_mode = "eval"`, the default) and starts at
    x + 0.001 N(0, I), as here. Its step size (0.007 for eps 0.031) is set here by the suite (the CIFAR-10
    suite uses 2/255).
    """

    defaults = {"beta": TRADES_BETA, "kl_reduction": "batchmean", "attack_mode": "eval"}
    bounds = {"beta": NON_NEGATIVE}
    choices = {"kl_reduction": KL_REDUCTIONS, "attack_mode": ATTACK_MODES}
    teacher_kind = None
    uses_teacher_logits = False

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.attack = trades_attack(student, ctx.adv_eps, ctx.adv_step_size, ctx.adv_steps, self.params["attack_mode"])

    def losses(self, batch: Batch):
        c = self.ctx
        warm_up(self.attack, c.adv_eps, c.adv_step_size, c.adv_warmup, batch.progress)
        return trades_terms(self.student, self.attack, batch.x, batch.y, self.params["beta"],
                            self.params["kl_reduction"])
