"""Logit standardization KD (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation") as a kdbench
plugin: a distillation method kdbench itself does not have, added by this file alone (it imports only from the
package `kdbench`, the public surface).

Each model's logits are z-scored per example, over the classes, before the softened KL of vanilla KD, so the
student matches the shape of the teacher's logits rather than their magnitude:

    Z(v) = (v - mean_c(v)) / (std_c(v) + 1e-7)          std_c with Bessel's correction (torch.std's default)
    loss = ce_weight * CE(s, y) + kd_weight * T^2 * KL(softmax(Z(t) / T) || softmax(Z(s) / T))

with the KL summed over the classes and averaged over the batch. This follows the reference code
(sunshangquan/logit-standardization-KD: `normalize` and `kd_loss` of mdistiller/distillers/KD.py, run with
`--logit-stand --base-temp 2 --kd-weight 9`), whose defaults are kept: T = 2 (the "base temperature"; the
standard deviation acts as each example's own temperature), kd_weight = 9, ce_weight = 0.1, and the T^2 factor.
Only the KD loss sees standardized logits; the student's predictions are its raw logits.
"""

import torch.nn.functional as F

from kdbench import Batch, Bound, Distiller, kd_loss, register_method

EPS = 1e-7  # added to the standard deviation, as in the reference code


def standardize(logits):
    """Z-score each row of `logits` (N, C) over its C classes."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + EPS)


@register_method("lskd")
class LogitStandardizedKD(Distiller):
    """Logit standardization KD (Sun et al. CVPR 2024): both models' logits z-scored, then T^2-scaled KD.

    loss = ce_weight * CE(s, y) + kd_weight * T^2 * KL(softmax(Z(t)/T) || softmax(Z(s)/T)),
    Z(v) = (v - mean(v)) / (std(v) + 1e-7)
    """

    defaults = {"temperature": 2.0, "kd_weight": 9.0, "ce_weight": 0.1}
    bounds = {"temperature": Bound(0.0, low_open=True, high_open=True),
              "kd_weight": Bound(0.0, high_open=True), "ce_weight": Bound(0.0, high_open=True)}

    def losses(self, batch: Batch):
        p = self.params
        s = self.student(batch.x)
        t = batch.teacher_logits[0]
        return {"kd": p["kd_weight"] * kd_loss(standardize(s), standardize(t), p["temperature"]),
                "ce": p["ce_weight"] * F.cross_entropy(s, batch.y)}
