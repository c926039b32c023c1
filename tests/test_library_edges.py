"""Library edges: OpenCV without its contrib module gives alseg's message for every region type
that needs it."""
from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from alseg.errors import AlsegError


@pytest.mark.parametrize("region", ["slic", "seeds"])
def test_superpixels_without_opencv_contrib_name_the_package_to_install(monkeypatch, region):
    import alseg.regions.slic as slic

    monkeypatch.delattr(cv2, "ximgproc")
    try:
        importlib.reload(slic)  # importing must not touch cv2.ximgproc
        from alseg.regions import build_regions

        with pytest.MonkeyPatch.context() as m:
            m.setattr("alseg.regions.REGIONS", {**importlib.import_module("alseg.regions").REGIONS, "slic": slic.slic_regions})
            cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "region" / f"{region}.yaml")
            with pytest.raises(AlsegError, match="opencv-contrib-python-headless"):
                build_regions(cfg, np.zeros((1, 8, 8, 3), np.uint8), "unused", {})
    finally:
        monkeypatch.undo()
        importlib.reload(slic)
