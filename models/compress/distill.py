"""Knowledge distillation from a teacher detector (e.g. the unpruned model while a pruned one is fine-tuned).

The student learns the teacher's head outputs at every anchor of every window — labelled or not — as soft targets:
class scores through a binary cross-entropy against the teacher's probabilities, and the box side distributions
(DFL bins) through a KL divergence weighted by the teacher's confidence, so that background anchors do not drown
the boxes. ``loss(student_preds, teacher_preds) -> (total, parts)`` like :class:`~models.networks.loss.DetectionLoss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DistillationLoss:
    """``(total, parts)`` with ``parts = [cls, box]`` (detached, per image); ``total`` is summed over images."""

    def __init__(self, reg_max: int, cls_gain: float = 1.0, box_gain: float = 1.0, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.reg_max, self.cls_gain, self.box_gain, self.temperature = reg_max, cls_gain, box_gain, temperature

    def __call__(self, student: dict[str, Tensor], teacher: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        s_scores, t_scores = student["scores"], teacher["scores"].detach()  # [B, nc, anchors] logits
        if s_scores.shape != t_scores.shape or student["boxes"].shape != teacher["boxes"].shape:
            raise ValueError(f"student and teacher heads differ: {tuple(s_scores.shape)} vs {tuple(t_scores.shape)}")
        images = s_scores.shape[0]
        t_prob = torch.sigmoid(t_scores / self.temperature)
        cls = F.binary_cross_entropy_with_logits(s_scores / self.temperature, t_prob, reduction="none")
        cls = cls.flatten(1).mean(1)  # [B]
        weight = t_prob.amax(1)  # [B, anchors]: where the teacher sees an object
        s_bins = student["boxes"].unflatten(1, (4, self.reg_max))  # [B, 4, reg_max, anchors]
        t_bins = teacher["boxes"].detach().unflatten(1, (4, self.reg_max))
        kl = F.kl_div(F.log_softmax(s_bins / self.temperature, 2), F.log_softmax(t_bins / self.temperature, 2),
                      reduction="none", log_target=True).sum(2).mean(1)  # [B, anchors]
        box = (kl * weight).sum(1) / weight.sum(1).clamp_min(1e-6)  # [B]
        scale = self.temperature**2  # keeps gradient sizes independent of the temperature
        total = scale * (self.cls_gain * cls.sum() + self.box_gain * box.sum())
        return total, torch.stack([cls.mean(), box.mean()]).detach() * (images > 0)


def frozen_teacher(model: nn.Module) -> nn.Module:
    """``model`` ready to teach: no gradients, batch norm on its running statistics, the head in training form."""
    model.requires_grad_(False)
    model.train()  # the Detect head returns raw per-anchor outputs only in training mode
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model
