"""The adversarial example crafted during training (the inner maximisation of adversarial training and of
adversarial distillation): the attacked model's mode, and the eps of each training step.

Mode (`attack_mode`, a parameter of every method that attacks its student in training): torchattacks switches
the attacked model to eval mode for an attack and back afterwards. "eval" keeps that: batch norm uses its
running statistics and the attack's forward passes leave them alone. "train" keeps the model in train mode
during the attack, as the MadryLab, ARD and IAD reference codes do: batch norm normalises with the batch's own
statistics and every forward pass of the attack updates the running statistics (what those codes do too, since
their attacks call the model in train mode).

Eps warm-up (`train.adv_warmup`, a fraction of training): the inner attack's eps ramps linearly from 0 to
`adv_eps` over that fraction of the training steps, then stays at `adv_eps`; the step size scales with it, so the
attack takes the same steps relative to its ball. 0 (the default) is off: every step attacks at `adv_eps`.
A common remedy for adversarial training that collapses to a constant prediction at a large eps (the model
first learns the task on nearly clean inputs); docs/suites.md says when to use it.
"""

from __future__ import annotations

ATTACK_MODES = ("train", "eval")  # the attacked model's mode during the inner attack


def set_attack_mode(attack, mode: str) -> None:
    """Run the torchattacks `attack` with its model in `mode` (one of ATTACK_MODES); torchattacks restores the
    model's own mode after each attack."""
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack mode {mode!r} is unknown; choose from: {', '.join(ATTACK_MODES)}")
    train = mode == "train"
    attack.set_model_training_mode(model_training=train, batchnorm_training=train, dropout_training=train)


def warmup_factor(progress: float, warmup: float) -> float:
    """min(progress / warmup, 1): the fraction of `adv_eps` attacked at `progress` (the fraction of training
    done); 1 when the warm-up is off (warmup = 0)."""
    return 1.0 if warmup <= 0 else min(max(progress, 0.0) / warmup, 1.0)


def warm_up(attack, eps: float, step_size: float, warmup: float, progress: float) -> float:
    """Set the torchattacks `attack`'s eps and step size for a training step at `progress`; returns the eps."""
    f = warmup_factor(progress, warmup)
    attack.eps, attack.alpha = eps * f, step_size * f
    return attack.eps
