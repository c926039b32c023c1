"""A strategy that quietly behaved like random would pass an end-to-end run: every model-based
strategy must choose differently from random on the same pool, model and random numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from alseg import query, selection
from alseg.device import device_generator
from alseg.model import build_model
from alseg.regions import Regions
from alseg.strategies import STRATEGIES, build_strategy

MODEL_BASED = sorted(name for name, cls in STRATEGIES.items() if cls.needs_model)


def _choose(name: str, model, images, labels, region_map) -> set:
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"strategy={name}", "++strategy.passes=3"])
    strategy = build_strategy(cfg.strategy)
    revealed = torch.full(labels.shape, 255, dtype=torch.uint8)
    regions = Regions("box", region_map, np.full(len(images), int(region_map.max()) + 1))
    g = torch.Generator().manual_seed(0)
    models = [model] * strategy.members
    scored = query.score_pool(strategy, models if strategy.needs_model else [], images, labels, revealed, regions, g, 4, 3)
    chosen = selection.choose(strategy, scored, selection.Budget(2, True), device_generator(g, "cpu"), 3)
    return set(zip(chosen.images.tolist(), chosen.regions.tolist()))


@pytest.mark.slow
def test_every_model_based_strategy_differs_from_random():
    torch.manual_seed(0)
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        model = build_model(compose(config_name="config").model, 3)
    images = torch.randint(0, 255, (6, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 3, (6, 32, 32), dtype=torch.uint8)
    boxes = np.broadcast_to((np.arange(32)[:, None] // 8) * 4 + np.arange(32)[None, :] // 8, (6, 32, 32))  # 16 boxes
    random = _choose("random", model, images, labels, boxes)
    for name in MODEL_BASED:
        assert _choose(name, model, images, labels, boxes) != random, f"{name} chose what random chose"
