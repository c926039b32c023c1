import math

import pytest
import torch
from omegaconf import OmegaConf

from alseg.augment import augment
from alseg.train import make_optimiser, make_schedule

AUG = OmegaConf.create({"hflip": True, "scale": [0.5, 2.0], "jitter": 0.3})


def test_augment_keeps_shapes_and_labels_aligned_with_pixels():
    g = torch.Generator().manual_seed(0)
    # the image's red channel encodes the label, so alignment can be checked after any transform
    blocks = torch.randint(0, 5, (4, 3, 4), generator=g).to(torch.uint8)
    y = blocks.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)  # 8x8 blocks of one label
    x = torch.stack([y.float() * 50, torch.zeros_like(y, dtype=torch.float32), torch.zeros_like(y, dtype=torch.float32)], 1)
    cfg = OmegaConf.merge(AUG, {"jitter": 0.0})
    for _ in range(5):
        ax, ay = augment(x, y, cfg, g)
        assert ax.shape == x.shape and ay.shape == y.shape
        keep = ay != 255
        assert keep.any()
        # bilinear resampling blurs edges: most labelled pixels still carry their own colour
        match = (ax[:, 0][keep] / 50).round() == ay[keep].float()
        assert match.float().mean() > 0.8


def test_jitter_stays_in_range_and_changes_colours():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=g) * 255
    y = torch.zeros(3, 8, 8, dtype=torch.uint8)
    ax, _ = augment(x, y, OmegaConf.create({"hflip": False, "scale": None, "jitter": 0.4}), g)
    assert ax.min() >= 0 and ax.max() <= 255 and not torch.allclose(ax, x)


def test_encoder_learning_rate_and_step_schedule():
    from alseg.model import build_model

    model = build_model(OmegaConf.create({"arch": "FPN", "encoder": "tu-test_resnet", "encoder_weights": None,
                                          "kwargs": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}}), 3)
    cfg = OmegaConf.create({"optimizer": "adam", "lr": 1e-3, "encoder_lr": 1e-4, "weight_decay": 0.0, "momentum": 0.9,
                            "schedule": "step", "milestones": [2], "gamma": 0.1, "epochs": 4})
    opt = make_optimiser(model, cfg)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    schedule = make_schedule(opt, cfg, steps=8, per_epoch=2)  # 2 steps per epoch: decay after step 4
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert all(abs(a - b) < 1e-12 for a, b in zip(lrs, [1e-3] * 4 + [1e-4] * 2))


def test_poly_and_cosine_schedules_decay_from_the_learning_rate_over_the_cycle_steps():
    for name, factor in [("poly", lambda s: (1 - s / 8) ** 0.9), ("cosine", lambda s: (1 + math.cos(math.pi * s / 8)) / 2)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        schedule = make_schedule(opt, OmegaConf.create({"schedule": name, "iterations": 8}), steps=8, per_epoch=1)
        lrs = []
        for _ in range(8):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        assert lrs == pytest.approx([0.1 * factor(s) for s in range(8)], abs=1e-12), name
        assert lrs[-1] > 0


def test_weight_average_follows_the_warmed_up_decay_and_loads_into_the_model():
    import torch

    from alseg.train import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.99)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 3.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update()
        decay = min(0.99, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
    average.finish()
    assert abs(model.weight.item() - expected) < 1e-6 and 0 < expected < 3.0


def test_a_batch_whose_labels_were_all_cropped_away_adds_nothing_instead_of_nan():
    import torch
    from omegaconf import OmegaConf

    from alseg.train import _loss

    model = torch.nn.Conv2d(3, 2, 1)
    y = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    loss = _loss(model, None, torch.randn(1, 3, 4, 4), y, OmegaConf.create({}), torch.autocast("cpu", enabled=False))
    assert loss.item() == 0.0


def test_median_frequency_weights_follow_eigen_and_fergus_over_the_revealed_labels():
    import numpy as np

    from alseg.pool import NO_LABEL, NOT_ASKED
    from alseg.train import class_weights

    revealed = np.full((4, 5, 6), NOT_ASKED, dtype=np.uint8)
    revealed[0, 0, :3], revealed[0, 1, 0] = 0, 1        # image 0: three of class 0, one of class 1
    revealed[1, 0, 0], revealed[1, 0, 1] = 1, 2         # image 1: one of class 1, one of class 2
    revealed[2, 0, :4], revealed[3, 2, 2] = NO_LABEL, 3  # image 2: asked void only; image 3: one of class 3
    # f_c = class c's pixels / revealed pixels of the images holding c: 3/4, 2/6, 1/2, 1/1; median 5/8
    frequency = torch.tensor([3 / 4, 2 / 6, 1 / 2, 1.0])
    weights = class_weights(revealed, torch.device("cpu"))
    assert weights.shape == (256,)
    assert torch.allclose(weights[:4], 0.625 / frequency)
    assert weights[4:].abs().sum() == 0  # classes never revealed, NO_LABEL and IGNORE weigh nothing
    # the same from a tensor on the device, and nothing when nothing is revealed
    assert torch.equal(class_weights(torch.from_numpy(revealed), torch.device("cpu")), weights)
    assert class_weights(np.full((2, 3, 3), NOT_ASKED, np.uint8), torch.device("cpu")).abs().sum() == 0


def test_weighted_loss_is_the_weighted_mean_over_the_labelled_pixels():
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from alseg.train import _loss

    torch.manual_seed(0)
    model, x = torch.nn.Conv2d(3, 3, 1), torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4), dtype=torch.uint8)
    y[0, 0] = 255
    weights = torch.zeros(256)
    weights[:3] = torch.tensor([0.5, 2.0, 1.0])
    off = torch.autocast("cpu", enabled=False)
    loss = _loss(model, None, x, y, OmegaConf.create({}), off, weights=weights)
    expected = F.cross_entropy(model(x), y.long(), weight=weights[:3], ignore_index=255)  # torch's weighted mean
    assert torch.allclose(loss, expected)
    plain = _loss(model, None, x, y, OmegaConf.create({}), off)
    assert torch.allclose(plain, F.cross_entropy(model(x), y.long(), ignore_index=255)) and not torch.allclose(plain, loss)


def test_a_run_with_median_frequency_balancing_asks_the_same_first_cycle_and_trains_otherwise(make_cfg, tmp_path):
    import pandas as pd

    from alseg.experiment import run
    from alseg.pool import load_selections

    run(make_cfg("strategy=random", "seed=1"), tmp_path / "plain")
    run(make_cfg("strategy=random", "seed=1", "train.class_weights=median_frequency"), tmp_path / "balanced")
    plain, balanced = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("plain", "balanced"))
    assert len(plain) == len(balanced) == 3 and balanced["miou"].notna().all()
    assert (plain["clicks"] == balanced["clicks"]).all() and (plain["train_steps"] == balanced["train_steps"]).all()
    (images_p, regions_p), (images_b, regions_b) = (load_selections(tmp_path / n)[0] for n in ("plain", "balanced"))
    assert (images_p == images_b).all() and (regions_p == regions_b).all()  # cycle 0 does not depend on training
    assert not (plain["miou"] == balanced["miou"]).all()  # the weights reach the loss
