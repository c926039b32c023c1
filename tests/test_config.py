"""Every config key is checked before any work (alseg.config), on configs composed from the YAML."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from alseg.config import RESULT_NEUTRAL_KEYS, check_config
from alseg.errors import AlsegError
from alseg.experiment import run
from alseg.state import RESUME_FREE_KEYS
from alseg.model import build_model
from alseg.results import IGNORED_KEYS

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def rejected(make_cfg, *overrides: str) -> str:
    with pytest.raises(AlsegError) as err:
        check_config(make_cfg(*overrides))
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("overrides,message", [
    (["budget.per_cycle=abc"], 'budget.per_cycle must be an integer >= 1, got "abc"'),
    (["budget=clicks", "budget.initial=0"], "budget.initial must be a number > 0, got 0"),
    (["budget.cycles=-1"], "budget.cycles must be an integer >= 0, got -1"),
    (["train.lr=-1"], "train.lr must be a number > 0, got -1"),
    (["dataset.size=[0,10]"], "dataset.size must be [height, width] in pixels, got [0, 10]"),
    (["dataset.size=[10]"], "dataset.size must be [height, width] in pixels, got [10]"),
    (["dataset.size=null"], "dataset.size must be [height, width] in pixels, got null"),  # synthetic has no native size
    (["seed=-1"], "seed must be an integer >= 0, got -1"),
    (["seed=abc"], 'seed must be an integer >= 0, got "abc"'),
    (["dataset.num_train=0"], "dataset.num_train must be an integer >= 1, got 0"),
    (["strategy=bald", "strategy.passes=0"], "strategy.passes must be an integer >= 1, got 0"),
    (["train.optimizer=rmsprop"], 'train.optimizer must be adam or sgd, got "rmsprop"'),
    (["annotation.noise=2"], "annotation.noise must be a number in [0, 1), got 2"),
    (["annotation=precise", "annotation.polygon_epsilon=-1"], "annotation.polygon_epsilon must be a number >= 0"),
    (["device=gpu"], 'device must be auto, cpu, cuda or cuda:N, got "gpu"'),
    (["resume=yes"], 'resume must be true, false or a saved cycle number to resume from (resume=N), got "yes"'),
    (["save_model=best"], "save_model must be last, every or never"),
    (["overlay_images=-1"], "overlay_images must be an integer >= 0"),
    (["region=seeds", "region.prior=9"], "region.prior must be an integer in [0, 5], got 9"),
    (["region=slic", "region.algorithm=quick"], "region.algorithm must be slic, slico or mslic"),
    (["region=box", "region.size=0"], "region.size must be an integer >= 1, got 0"),
    (["strategy.sampling=greedy"], 'strategy.sampling must be topk, power, softmax or softrank, got "greedy"'),
    (["strategy.beta=0"], "strategy.beta must be a number > 0, got 0"),
    (["strategy.top_percent=2"], "strategy.top_percent must be null or a number in (0, 1], got 2"),
    (["strategy=margin", "strategy.mc_scope=all"], "strategy.mc_scope must be head or full"),
    (["strategy=bald", "strategy.committee=ensemble"], "strategy.committee must be dropout or models"),
    (["strategy=hybrid", "strategy.uncertainty=random"], "strategy.uncertainty must be entropy, least_confidence"),
    (["train.iterations=1.5", "train.epochs=null"], "train.iterations must be null or an integer >= 1, got 1.5"),
    (["train.epochs=0"], "train.epochs must be null or an integer >= 1, got 0"),
    (["train.augment.scale=[2,1]"], "train.augment.scale must be null or [min, max] with 0 < min <= max"),
    (["model.dropout=1"], "model.dropout must be null or a number in [0, 1), got 1"),
    (["model.kwargs=null"], "model.kwargs must be a mapping"),
    (["dataset=camvid", "dataset.eval_split=train"], 'dataset.eval_split must be val or test, got "train"'),
    (["dataset=voc", "dataset.augmented=1"], "dataset.augmented must be true or false, got 1"),
    (["train.class_weights=inverse"], 'train.class_weights must be none or median_frequency, got "inverse"'),
])
def test_a_wrong_value_names_the_key_and_what_it_accepts(make_cfg, overrides, message):
    assert message in rejected(make_cfg, *overrides)


def test_keys_a_group_does_not_have_are_refused_except_for_a_users_strategy(make_cfg):
    assert "strategy.pases is not a key of strategy=margin; its keys are name, aggregate" in rejected(
        make_cfg, "strategy=margin", "+strategy.pases=3")
    assert "seeds is not a key of the top level" in rejected(make_cfg, "+seeds=3")
    assert "train.augment.flip is not a key of train" in rejected(make_cfg, "+train.augment.flip=true")
    check_config(make_cfg("strategy=custom", "strategy._target_=alseg.strategies.Margin", "+strategy.my_key=3"))


@pytest.mark.parametrize("overrides,keys", [
    (["strategy=bald", "strategy.passes=1"], ("strategy.passes must be >= 2", "one pass cannot rank")),
    (["strategy=entropy", "strategy.mc=true", "strategy.passes=1"], ("strategy.mc=true", "strategy.passes must be >= 2")),
    (["strategy=bald", "model.dropout=null"], ("strategy.committee=dropout", "model.dropout must be > 0", "got null")),
    (["strategy=margin", "strategy.mc=true", "model.dropout=0"], ("strategy.mc=true", "model.dropout must be > 0")),
    (["strategy=hybrid", "strategy.uncertainty=bald", "model.dropout=0"], ("model.dropout must be > 0",)),
    (["strategy=vote_entropy", "strategy.committee=models", "strategy.members=1"], ("strategy.members must be >= 2",)),
    (["train.iterations=100"], ("train.epochs=2 and train.iterations=100 are both set", "train.epochs=null")),
    (["train.epochs=null"], ("train.epochs and train.iterations are both null",)),
    (["strategy=random", "strategy.class_balance=true"], ("model-based strategy",)),
    (["strategy=coreset", "budget=clicks"], ("use budget=per_image",)),
    (["annotation=multiclass", "region=box", "train.class_weights=median_frequency"],
     ("train.class_weights=median_frequency", "annotation=multiclass", "train.class_weights=none")),
    (["dataset=folder", "dataset.class_names=[a,b]", "dataset.palette=[[0,0,0]]"], ("one [r, g, b] per class",)),
    (["model.freeze_encoder=true"], ("model.freeze_encoder=true", "random initial weights", "model.encoder_weights")),
    (["model=custom", "model._target_=my.make", "+model.freeze_encoder=true"],
     ("model.freeze_encoder=true", "model._target_", "requires_grad_(False)")),
])
def test_keys_that_cannot_go_together_name_each_other(make_cfg, overrides, keys):
    message = rejected(make_cfg, *overrides)
    assert all(key in message for key in keys), message


def test_mc_strategies_pass_with_two_passes_dropout_or_a_committee_of_models(make_cfg):
    check_config(make_cfg("strategy=bald", "strategy.passes=2"))
    check_config(make_cfg("strategy=vote_entropy", "strategy.committee=models", "strategy.passes=1", "model.dropout=null"))
    check_config(make_cfg("strategy=bald", "model=custom", "model._target_=my_pkg.make", "model.dropout=null"))
    check_config(make_cfg("train.epochs=null", "train.iterations=100"))


@pytest.mark.parametrize("group,target", [("strategy", "my_pkg.my_module.MyStrategy"), ("model", "my_pkg.my_module.make_model")])
def test_custom_without_target_says_how_to_set_it(make_cfg, group, target):
    message = rejected(make_cfg, f"{group}=custom")
    assert message.startswith(f"{group}._target_ is not set") and f"{group}._target_={target}" in message


@pytest.mark.parametrize("group", ["dataset", "region", "annotation", "strategy", "budget", "model", "train"])
def test_every_shipped_option_passes(make_cfg, group):
    extra = {"custom": [f"{group}._target_=alseg.strategies.Margin" if group == "strategy" else "model._target_=my.make"],
             "folder": ["dataset.class_names=[a,b]"]}
    for option in options(group):
        check_config(make_cfg(f"{group}={option}", *extra.get(option, [])))


@pytest.mark.parametrize("name", options("experiment"))
def test_every_protocol_passes_and_builds_its_model_offline(name):
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}", "model.encoder_weights=null"])
    check_config(cfg)
    assert isinstance(build_model(cfg.model, 19), torch.nn.Module)


@pytest.mark.parametrize("key", ["train.optimizer=rmsprop", "annotation.noise=2"])
def test_late_checked_values_now_fail_before_regions_and_costs_are_cached(make_cfg, tmp_path, key):
    cfg = make_cfg("region=seeds", "region.num_superpixels=20", "annotation=precise", key)
    with pytest.raises(AlsegError, match=key.split("=")[0]):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_result_neutral_keys_are_one_list():
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "seed=1", "overlay_images=2", "save_model=never", "device=cpu", "resume=true"])
    assert tuple(cfg.hydra.job.config.override_dirname.exclude_keys) == RESULT_NEUTRAL_KEYS
    assert cfg.hydra.job.override_dirname == "seed=1"  # the sweep folder of this job
    assert set(RESUME_FREE_KEYS) == set(RESULT_NEUTRAL_KEYS) and set(IGNORED_KEYS) == {"seed", *RESULT_NEUTRAL_KEYS}
    assert {"overlay_images", "save_model", "resume", "device"} <= set(RESULT_NEUTRAL_KEYS)


def test_strategies_share_their_common_keys_from_one_file():
    common = ["name", "aggregate", "class_balance", "top_percent", "exclude_void", "sampling", "beta"]
    with initialize_config_module(config_module="alseg.conf", version_base="1.3"):
        for option in options("strategy"):
            strategy = compose(config_name="config", overrides=[f"strategy={option}"]).strategy
            assert list(strategy)[:7] == common and strategy.name == option
    for option in options("strategy"):
        assert "aggregate:" not in (CONF / "strategy" / f"{option}.yaml").read_text()
