"""Distillation: the loss, the frozen teacher, and training with a teacher through the CLI."""

import pytest
import torch

from models.compress.distill import DistillationLoss, frozen_teacher
from models.networks.detector import DetectorConfig, build_detector

NC, REG_MAX, ANCHORS = 2, 16, 30


def _preds(seed, images=3):
    g = torch.Generator().manual_seed(seed)
    return {"scores": torch.randn(images, NC, ANCHORS, generator=g),
            "boxes": torch.randn(images, 4 * REG_MAX, ANCHORS, generator=g)}


def _with_grad(preds):
    return {k: v.clone().requires_grad_(True) for k, v in preds.items()}


def test_a_student_equal_to_its_teacher_gets_no_gradient():
    teacher = _preds(0)
    student = _with_grad(teacher)
    total, parts = DistillationLoss(REG_MAX)(student, teacher)
    total.backward()
    assert student["scores"].grad.abs().max() < 1e-6 and student["boxes"].grad.abs().max() < 1e-6
    assert parts[1] == pytest.approx(0.0, abs=1e-6)  # the box KL vanishes; the class BCE keeps the teacher's entropy


def test_a_different_student_is_pulled_toward_the_teacher():
    teacher, student = _preds(0), _with_grad(_preds(1))
    loss = DistillationLoss(REG_MAX)
    total, parts = loss(student, teacher)
    assert total > 0 and parts[1] > 0
    total.backward()
    with torch.no_grad():  # one small step down the gradient lowers the loss
        stepped = {k: v - 0.5 * v.grad for k, v in student.items()}
    assert loss(stepped, teacher)[0] < total


def test_box_distillation_follows_the_teachers_confidence():
    teacher, student = _preds(0, images=1), _preds(1, images=1)
    teacher["scores"][:] = -20.0  # the teacher sees nothing anywhere but at anchor 0
    teacher["scores"][0, 0, 0] = 20.0
    matched = {k: v.clone() for k, v in student.items()}
    matched["boxes"][..., 0] = teacher["boxes"][..., 0]  # right where the teacher is confident, wrong elsewhere
    assert DistillationLoss(REG_MAX)(matched, teacher)[1][1] < 1e-3
    assert DistillationLoss(REG_MAX)(student, teacher)[1][1] > 1e-2


def test_bad_shapes_and_temperature_are_errors():
    with pytest.raises(ValueError, match="differ"):
        DistillationLoss(REG_MAX)(_preds(0), _preds(1, images=2))
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(REG_MAX, temperature=0)


def test_frozen_teacher_gives_training_outputs_without_gradients_or_bn_updates():
    model = build_detector(DetectorConfig(bins=2, input_width=64, input_height=64))
    teacher = frozen_teacher(model)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        out, _ = teacher(torch.randint(0, 3, (2, 2, 2, 64, 64), dtype=torch.uint8), None)
    assert set(out) >= {"scores", "boxes"} and out["scores"].shape[:2] == (2, 2)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN running stats untouched
