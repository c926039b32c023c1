"""train.semi=pseudo_label: the previous cycle's model pseudo-labels the pixels never asked."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import alseg.train
from alseg.data.base import IGNORE
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.model import autocast
from alseg.pool import NOT_ASKED
from alseg.train import UNASKED, _loss, make_teacher, pseudo_label_loss, pseudo_labels, train_cycle

CPU = autocast(torch.device("cpu"))


class Fixed(torch.nn.Module):
    """A 'network' whose logits [1, C, H, W] are given, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32)[None])

    def forward(self, x):
        return self.logits.expand(len(x), -1, -1, -1)


# a 2x2 image, 2 classes: the teacher's softmax per pixel (channel-first)
TEACHER = torch.tensor([[[0.97, 0.02], [0.90, 0.04]],
                        [[0.03, 0.98], [0.10, 0.96]]])
# the student's logits: p(class 0) = 3/4 at (0, 0), 1/3 at (0, 1), 1/2 at (1, 1)
STUDENT = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]],
                        [[0.0, math.log(2)], [0.0, 0.0]]])


def test_pseudo_label_mask_and_loss_by_hand():
    unasked = torch.tensor([[[True, False], [True, True]]])  # (0, 1) is revealed
    labels, keep = pseudo_labels(TEACHER[None], unasked, 0.95)
    assert labels.tolist() == [[[0, 1], [0, 1]]]
    # (0, 0): 0.97 > 0.95; (0, 1): revealed; (1, 0): 0.90 too low; (1, 1): 0.96
    assert keep.tolist() == [[[True, False], [False, True]]]
    # CE at (0, 0) against 0: -log 3/4; at (1, 1) against 1: -log 1/2; over 3 pixels never asked
    loss = pseudo_label_loss(STUDENT[None], labels, keep, unasked)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 3)


def test_batch_loss_adds_the_weighted_term_and_leaves_void_and_padding_out():
    cfg = OmegaConf.create({"pseudo_threshold": 0.95, "pseudo_weight": 0.5})
    teacher, student, x = Fixed(TEACHER.log()), Fixed(STUDENT), torch.zeros(1, 3, 2, 2)
    y = torch.tensor([[[UNASKED, 1], [UNASKED, UNASKED]]], dtype=torch.uint8)
    supervised = math.log(3 / 2)  # (0, 1) labelled 1, p = 2/3
    pseudo = (math.log(4 / 3) + math.log(2)) / 3
    assert _loss(student, teacher, x, y, cfg, CPU).item() == pytest.approx(supervised + 0.5 * pseudo)
    y[0, 1, 0] = IGNORE  # asked but void, or crop padding: neither labelled nor pseudo-labelled
    assert _loss(student, teacher, x, y, cfg, CPU).item() == pytest.approx(supervised + 0.5 * pseudo * 3 / 2)
    plain = y.masked_fill(y == UNASKED, IGNORE)  # the targets without a teacher
    assert _loss(student, None, x, plain, cfg, CPU).item() == pytest.approx(supervised)


def tiny_net() -> torch.nn.Module:
    """A small network with batch norm and dropout (both must behave the same with and without
    a teacher), quick to train on a CPU."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Dropout2d(0.2), torch.nn.Conv2d(8, 3, 1))


def _train(train_cfg, images, revealed, teacher):
    torch.manual_seed(0)
    model = tiny_net()
    train_cycle(model, images, revealed, train_cfg, torch.Generator().manual_seed(0), 1, teacher=teacher)
    return model.state_dict()


def test_threshold_one_trains_exactly_as_without_and_a_lower_one_does_not(make_cfg):
    cfg = make_cfg("train.epochs=2", "train.batch_size=2", "train.semi=pseudo_label", "train.augment.scale=[0.5,2.0]")
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=g)
    revealed = np.full((4, 16, 16), NOT_ASKED, dtype=np.uint8)
    revealed[:, ::2, ::2] = torch.randint(0, 3, (4, 8, 8), generator=g).numpy()
    teacher = tiny_net().eval().requires_grad_(False)
    plain = _train(cfg.train, images, revealed, None)
    cfg.train.pseudo_threshold = 1.0
    never = _train(cfg.train, images, revealed, teacher)
    assert all(torch.equal(plain[k], never[k]) for k in plain)
    cfg.train.pseudo_threshold = 0.0
    always = _train(cfg.train, images, revealed, teacher)
    assert not all(torch.equal(plain[k], always[k]) for k in plain)


class Recorder(torch.nn.Module):
    """A 1x1 convolution that keeps every input it sees."""

    def __init__(self):
        super().__init__()
        self.conv, self.inputs = torch.nn.Conv2d(3, 3, 1), []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def test_teacher_sees_the_students_augmented_batch(make_cfg):
    cfg = make_cfg("train.epochs=2", "train.batch_size=2", "train.augment.scale=[0.5,2.0]", "train.augment.jitter=0.3")
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    revealed = np.full((4, 16, 16), NOT_ASKED, dtype=np.uint8)
    revealed[:, ::2, ::2] = 1
    student, teacher = Recorder(), Recorder().eval()
    steps = train_cycle(student, images, revealed, cfg.train, torch.Generator().manual_seed(0), 1, teacher=teacher)
    assert len(student.inputs) == len(teacher.inputs) == steps == 4
    assert all(torch.equal(s, t) for s, t in zip(student.inputs, teacher.inputs))


def test_teacher_is_a_frozen_copy_of_the_previous_cycles_model_from_cycle_one():
    model = torch.nn.Conv2d(3, 2, 1)
    cfg = OmegaConf.create({"semi": "pseudo_label"})
    assert make_teacher(model, cfg, 0) is None
    assert make_teacher(model, OmegaConf.create({"semi": "none"}), 1) is None
    teacher = make_teacher(model, cfg, 1)
    before = teacher.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # re-initialising or training the model leaves the teacher alone
    assert torch.equal(teacher.weight, before) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("key, value, match", [
    ("semi", "mean_teacher", "train.semi must be none or pseudo_label"),
    ("pseudo_threshold", 1.5, r"train.pseudo_threshold must be a number in \[0, 1\]"),
    ("pseudo_threshold", "high", r"train.pseudo_threshold must be a number in \[0, 1\]"),
    ("pseudo_weight", -1.0, "train.pseudo_weight must be a number >= 0"),
])
def test_bad_semi_settings_are_refused(make_cfg, key, value, match):
    from alseg.config import check_config

    cfg = make_cfg("train.semi=pseudo_label")
    cfg.train[key] = value
    with pytest.raises(AlsegError, match=match):
        check_config(cfg)


def test_bad_semi_setting_fails_the_run_before_any_work(make_cfg, tmp_path):
    with pytest.raises(AlsegError, match="train.semi"):
        run(make_cfg("train.semi=fixmatch"), tmp_path / "run")
    assert not (tmp_path / "run" / "state").exists()


def test_tiny_run_pseudo_labels_from_cycle_one(make_cfg, tmp_path, monkeypatch):
    calls = []
    original = alseg.train.pseudo_label_loss
    monkeypatch.setattr(alseg.train, "pseudo_label_loss", lambda *a: calls.append(1) or original(*a))
    cfg = make_cfg("train.semi=pseudo_label", "train.pseudo_threshold=0.5", "budget.cycles=1", "train.epochs=1",
                   "strategy=entropy")
    assert run(cfg, tmp_path / "run")["status"] == "completed"
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["cycle"].tolist() == [0, 1]
    assert len(calls) == metrics["train_steps"][1]  # every step of cycle 1, none of cycle 0
