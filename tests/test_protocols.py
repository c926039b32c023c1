"""The paper protocols are one override away and match ../shared/docs/PROTOCOLS.md."""
import pytest
from hydra import compose, initialize_config_module


def protocol(name, *overrides):
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}", *overrides])


@pytest.mark.parametrize("name,dataset,size,cycles", [
    ("pixelpick_camvid", "camvid", [360, 480], 9),
    ("pixelpick_cityscapes", "cityscapes", [256, 512], 9),
    ("pixelpick_voc", "voc", [320, 320], 4),
])
def test_pixelpick(name, dataset, size, cycles):
    cfg = protocol(name)
    assert cfg.dataset.name == dataset and list(cfg.dataset.size) == size
    assert (cfg.region.name, cfg.annotation.name, cfg.strategy.name) == ("pixel", "precise", "margin")
    assert cfg.strategy.top_percent == 0.05 and cfg.strategy.exclude_void
    b = cfg.budget
    assert (b.name, b.initial, b.per_cycle, b.cycles) == ("per_image", 10, 10, cycles)  # 10 px per image per cycle
    assert (cfg.model.arch, cfg.model.encoder, cfg.model.encoder_weights) == ("DeepLabV3Plus", "mobilenet_v2", "imagenet")
    assert cfg.train.epochs == 50 and cfg.train.reinit


def test_pixelpick_camvid_optimiser():
    t = protocol("pixelpick_camvid").train
    assert (t.optimizer, t.lr, t.encoder_lr, t.weight_decay, t.batch_size) == ("adam", 5e-4, 5e-5, 2e-4, 4)
    assert (t.schedule, list(t.milestones), t.gamma) == ("step", [20, 40], 0.1)
    assert protocol("pixelpick_camvid").budget.initial + 9 * 10 == 100  # 100 pixels per image at the end


def test_pixelpick_voc_optimiser():
    t = protocol("pixelpick_voc").train
    assert (t.optimizer, t.lr, t.encoder_lr, t.momentum, t.schedule, t.batch_size) == ("sgd", 1e-2, 1e-3, 0.9, "poly", 10)


@pytest.mark.parametrize("name,dataset,clicks", [("cai_cityscapes", "cityscapes", 100000), ("cai_voc", "voc", 10000)])
def test_cai(name, dataset, clicks):
    cfg = protocol(name)
    assert cfg.dataset.name == dataset
    assert (cfg.region.name, cfg.annotation.name, cfg.strategy.name) == ("seeds", "dominant", "ratio")
    assert cfg.strategy.class_balance and cfg.strategy.aggregate == "mean"
    assert (cfg.region.num_levels, cfg.region.prior, cfg.region.histogram_bins, cfg.region.double_step, cfg.region.iterations) == (5, 3, 10, True, 10)
    b = cfg.budget
    assert (b.name, b.initial, b.per_cycle, b.cycles) == ("clicks", clicks, clicks, 4)
    assert (cfg.model.arch, cfg.model.encoder, cfg.model.encoder_weights) == ("DeepLabV3Plus", "tu-xception65", "imagenet")
    assert cfg.train.reinit
    # a fixed number of steps per cycle, as Cai's code trains: every strategy trains equally long
    assert cfg.train.epochs is None and cfg.train.iterations == {"cityscapes": 60000, "voc": 30000}[dataset]


def test_cai_rectangles_keep_the_papers_area_at_half_resolution():
    cfg = protocol("cai_cityscapes", "region=box", "annotation=precise")
    assert list(cfg.dataset.size) == [512, 1024] and cfg.region.size == 16  # 32x32 at 1024x2048


def test_cpu_camvid_keeps_the_structure_at_a_small_size():
    cfg = protocol("cpu_camvid")
    assert cfg.dataset.name == "camvid" and cfg.dataset.eval_split == "val"
    assert (cfg.region.name, cfg.strategy.name, cfg.budget.name, cfg.budget.cycles) == ("pixel", "margin", "per_image", 4)
    assert cfg.model.encoder_weights is None
    # every strategy trains equally long, with the averaged weights that steady a cycle's end
    assert cfg.train.epochs is None and cfg.train.iterations == 450 and cfg.train.ema == 0.99
    assert cfg.train.reinit is True  # from the same initial weights every cycle: the steadier of the two over 10 seeds


def test_cai_overlay_passes_the_check_with_boxes_and_superpixels():
    from alseg.config import check_config

    for region in ("seeds", "box"):
        check_config(protocol("cai_cityscapes", f"region={region}", "annotation=precise", "model.encoder_weights=null"))
