"""What every config key accepts, checked before any work; the one list of result-neutral keys.

The values (defaults) live only in conf/*.yaml; this module says what they may be. SCHEMA
maps each group, and each `group/option` whose keys differ, to what its keys accept; rules
between keys follow. A problem is one line naming the key and what it accepts (AlsegError,
exit code 2). The checks run inside each job (not at Hydra's composition), so one bad job of
a sweep fails alone and the others still run.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alseg.errors import AlsegError


def _result_neutral_keys() -> tuple[str, ...]:
    """conf/config.yaml's hydra.job.config.override_dirname.exclude_keys: keys that never
    change a run's results (sweep folders are not named by them, a resumed run may change
    them, `alseg plot` does not group by them)."""
    with resources.files("alseg.conf").joinpath("config.yaml").open() as f:
        return tuple(OmegaConf.load(f).hydra.job.config.override_dirname.exclude_keys)


RESULT_NEUTRAL_KEYS = _result_neutral_keys()
# Keys added since runs were first saved as today (6436b09), each with the value that reproduces
# how alseg ran before it existed: a run saved without one resumes when the current config has
# that value, and `alseg plot` groups it with runs that set it so. A key added to conf/ is added
# here too (tests/test_rundir.py checks).
ADDED_KEYS = {
    "annotation.sieve": False, "callbacks": (), "dataset.eval_size": "working", "devices": 1,
    "strategy.modifiers": (), "train.ema": None, "train.ensemble": 1, "train.seed": None, "train.semi": "none",
    "train.pseudo_threshold": 0.95, "train.pseudo_weight": 1.0, "train.class_weights": "none",
    "model.freeze_encoder": False,
}


@dataclass(frozen=True)
class Accepts:
    """What one key accepts: `text` ends the sentence "KEY must be ...", `test` judges the value."""

    text: str
    test: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int, high: int | None = None) -> Accepts:
    text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Accepts(text, lambda v: _is_int(v) and low <= v and (high is None or v <= high))


def number(interval: str) -> Accepts:
    """A real number in `interval`, written as in maths: "(0, 1]", "[0, inf)"."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above, below = interval[0] == "(", interval[-1] == ")"
    text = f"a number {'>' if above else '>='} {low:g}" if high == math.inf else f"a number in {interval}"
    return Accepts(text, lambda v: _is_number(v) and (low < v if above else low <= v) and (v < high if below else v <= high))


def choice(*options: str) -> Accepts:
    text = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
    return Accepts(text, lambda v: isinstance(v, str) and v in options)


def nullable(accepts: Accepts) -> Accepts:
    return Accepts(f"null or {accepts.text}", lambda v: v is None or accepts.test(v))


def _pair(v: Any, item: Callable[[Any], bool]) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(item(x) for x in v)


FLAG = Accepts("true or false", lambda v: isinstance(v, bool))
TEXT = Accepts("a string", lambda v: isinstance(v, str) and v != "")
MAPPING = Accepts("a mapping (key: value, ...)", lambda v: isinstance(v, dict))
SIZE = Accepts("[height, width] in pixels", lambda v: _pair(v, lambda x: _is_int(x) and x >= 1))
RGB = Accepts("[r, g, b] with integers 0-255", lambda v: isinstance(v, list) and len(v) == 3
              and all(_is_int(x) and 0 <= x <= 255 for x in v))


def _target(example: str) -> Accepts:
    return Accepts(f"the import path of {example}", lambda v: isinstance(v, str) and re.fullmatch(r"[\w.]+\.\w+", v))


IMPORT_PATHS = Accepts("a list of import paths, e.g. [my_pkg.MyClass]",
                       lambda v: isinstance(v, list) and all(isinstance(x, str) and "." in x for x in v))
TOP = {
    "seed": integer(0),
    "device": Accepts("auto, cpu, cuda or cuda:N", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)),
    "devices": integer(1),
    "resume": Accepts("true, false or a saved cycle number to resume from (resume=N)", lambda v: isinstance(v, bool) or (_is_int(v) and v >= 0)),
    "save_model": choice("last", "every", "never"),
    "overlay_images": integer(0),
    "placement": choice("auto", "device", "host"),
    "placement_fraction": number("(0, 1]"),
    "callbacks": IMPORT_PATHS,
}
GROUPS = ("dataset", "region", "annotation", "strategy", "budget", "model", "train")
PASSES = {"passes": integer(1), "mc_scope": choice("head", "full")}
MC = {"mc": FLAG, **PASSES}
COMMITTEE = {**PASSES, "committee": choice("dropout", "models"), "members": integer(1)}
SCORES = ("entropy", "least_confidence", "margin", "ratio", "ripu", "bald", "variation_ratio", "vote_entropy", "kl_consensus")
COUNT = number("(0, inf)")

SCHEMA: dict[str, dict[str, Accepts]] = {
    "dataset": {"name": TEXT, "root": nullable(TEXT), "size": nullable(SIZE), "cache_dir": TEXT,
                "eval_size": choice("working", "native")},
    "dataset/synthetic": {"size": SIZE, "num_train": integer(1), "num_val": integer(1), "data_seed": integer(0)},
    "dataset/camvid": {"eval_split": choice("val", "test")},
    "dataset/cityscapes": {"eval_split": choice("val", "test")},
    "dataset/voc": {"eval_split": choice("val"), "augmented": FLAG},
    "dataset/folder": {
        "eval_split": choice("val"),
        "class_names": Accepts("a list of class names, e.g. dataset.class_names=[road,car]", lambda v: isinstance(v, list) and v != []),
        "ignore_index": nullable(integer(0, 255)), "palette": nullable(Accepts("a list of [r, g, b], one per class",
                                                                              lambda v: isinstance(v, list) and all(map(RGB.test, v)))),
        "ignore_color": nullable(RGB), "val_fraction": number("(0, 1)"), "split_seed": integer(0),
    },
    "region": {"name": TEXT},
    "region/pixel": {},
    "region/image": {},
    "region/box": {"size": integer(1)},
    "region/seeds": {"num_superpixels": nullable(integer(1)), "num_levels": integer(1), "prior": integer(0, 5),
                     "histogram_bins": integer(1), "double_step": FLAG, "iterations": integer(1)},
    "region/slic": {"algorithm": choice("slic", "slico", "mslic"), "num_superpixels": nullable(integer(1)),
                    "region_size": nullable(integer(2)), "ruler": number("(0, inf)"), "iterations": integer(1),
                    "min_element_size": nullable(integer(0)), "color_space": choice("lab", "hsv", "rgb"), "blur": FLAG},
    "region/adaptive": {"base": choice("seeds", "slic"), "num_superpixels": nullable(integer(1)),
                        "merge_threshold": number("[0, 1]")},
    "annotation": {"name": TEXT, "noise": number("[0, 1)"), "sieve": FLAG},
    "annotation/dominant": {},
    "annotation/precise": {"polygon_epsilon": number("[0, inf)")},
    "annotation/multiclass": {"click_per_class": number("[1, inf)"), "prototypes": FLAG},
    "strategy": {"name": TEXT, "aggregate": choice("mean", "sum", "max"), "class_balance": FLAG,
                 "top_percent": nullable(number("(0, 1]")), "exclude_void": FLAG,
                 "sampling": choice("topk", "power", "softmax", "softrank"), "beta": number("(0, inf)"),
                 "modifiers": IMPORT_PATHS},
    "strategy/random": {},
    **{f"strategy/{name}": MC for name in SCORES[:4]},
    "strategy/ripu": {**MC, "kernel": Accepts("an odd integer >= 1 (the neighbourhood's side)",
                                               lambda v: _is_int(v) and v >= 1 and v % 2 == 1)},
    **{f"strategy/{name}": COMMITTEE for name in SCORES[5:]},
    "strategy/coreset": {"pixel_candidates": integer(1)},
    "strategy/hybrid": {**MC, "uncertainty": choice(*SCORES), "candidates": number("[1, inf)"), "pixel_candidates": integer(1)},
    "strategy/custom": {**MC, "_target_": _target("your Strategy subclass, e.g. strategy._target_=my_pkg.my_module.MyStrategy")},
    "budget": {"name": TEXT},
    "budget/per_image": {"initial": integer(1), "per_cycle": integer(1), "cycles": integer(0)},
    "budget/clicks": {"initial": COUNT, "per_cycle": COUNT, "cycles": integer(0)},
    "budget/full": {"initial": number("[0, inf)"), "per_cycle": number("[0, inf)"), "cycles": integer(0)},
    "model": {"name": TEXT, "arch": TEXT, "encoder": TEXT, "encoder_weights": nullable(TEXT), "kwargs": MAPPING,
              "dropout": nullable(number("[0, 1)")), "freeze_encoder": FLAG,
              "_target_": _target("a function returning a torch.nn.Module, e.g. model._target_=my_pkg.my_module.make_model")},
    "train": {"name": TEXT, "epochs": nullable(integer(1)), "iterations": nullable(integer(1)), "batch_size": integer(1),
              "optimizer": choice("adam", "sgd"), "lr": number("(0, inf)"), "encoder_lr": nullable(number("(0, inf)")),
              "momentum": number("[0, 1)"), "weight_decay": number("[0, inf)"), "schedule": choice("constant", "step", "poly", "cosine"),
              "milestones": Accepts("a list of integers >= 1", lambda v: isinstance(v, list) and all(_is_int(x) and x >= 1 for x in v)),
              "gamma": number("(0, inf)"), "reinit": FLAG, "ema": nullable(number("(0, 1)")), "ensemble": integer(1), "seed": nullable(integer(0)),
              "semi": choice("none", "pseudo_label"), "class_weights": choice("none", "median_frequency"), "pseudo_threshold": number("[0, 1]"), "pseudo_weight": number("[0, inf)"), "eval_batch_size": integer(1), "augment.hflip": FLAG,
              "augment.scale": nullable(Accepts("[min, max] with 0 < min <= max", lambda v: _pair(v, _is_number) and 0 < v[0] <= v[1])),
              "augment.jitter": number("[0, 1)")},
    # several options at once (logger=[tensorboard,mlflow]): each adds its flag and its keys
    "logger": {"tensorboard": FLAG, "mlflow": FLAG, "wandb": FLAG, "dir": nullable(TEXT), "tracking_uri": nullable(TEXT),
               "experiment": TEXT, "project": TEXT, "mode": choice("online", "offline")},
}


def check_config(cfg: DictConfig) -> None:
    """Reject any key whose value is not what it accepts, and keys that cannot go together,
    before any work is done (no data loaded, nothing cached)."""
    missing = [group for group in GROUPS if group not in cfg]
    if missing:
        raise AlsegError(f"the config lacks the group(s) {', '.join(missing)}")
    _check_keys(cfg, TOP, "", "the top level", skip=(*GROUPS, "logger"))
    for group in GROUPS:
        _check_group(cfg[group], group)
    if "logger" in cfg:
        _check_keys(cfg.logger, SCHEMA["logger"], "logger.", "logger")
    _check_train(cfg.train)
    _check_model(cfg.model)
    _check_annotation(cfg)
    _check_strategy(cfg)
    if cfg.get("devices", 1) > 1 and cfg.train.batch_size % cfg.devices:
        raise AlsegError(f"train.batch_size={cfg.train.batch_size} does not divide into devices={cfg.devices} "
                         f"processes: use a multiple of {cfg.devices}")
    if cfg.dataset.name == "folder":  # class names, palette and void settings together
        from alseg.data.folder import Folder

        Folder(cfg.dataset)


def _check_group(node: DictConfig, group: str) -> None:
    """One group's keys against SCHEMA[group] and, where its options differ, SCHEMA[group/option]
    (`custom` when `_target_` names a user's class, whose own keys are not known here)."""
    options = [key.partition("/")[2] for key in SCHEMA if key.startswith(f"{group}/")]
    specs, where, foreign = dict(SCHEMA[group]), group, frozenset()
    if options:
        option = "custom" if "_target_" in node and "custom" in options else _value(node, "name", f"{group}.name")
        if option not in options:
            raise AlsegError(f"{group}.name must be one of {', '.join(options)}, got {option!r}")
        specs.update(SCHEMA[f"{group}/{option}"])
        where = f"{group}={option}"
        # an experiment overlay sets keys for several options (cai_*: region.num_superpixels for
        # seeds, region.size for box): another option's key is passed over, a typo is not
        foreign = frozenset(k for o in options for k in SCHEMA[f"{group}/{o}"]) - specs.keys()
    _check_keys(node, specs, f"{group}.", where, closed=where != f"{group}=custom", foreign=foreign)


def _check_keys(node: DictConfig, specs: dict[str, Accepts], prefix: str, where: str,
                skip: tuple[str, ...] = (), closed: bool = True, foreign: frozenset = frozenset()) -> None:
    """Each key of `node` but `skip` against `specs` ("augment.scale" for a nested key); a key
    not in `specs` (nor in `foreign`, keys that other options of the group use) is an error
    when `closed`."""
    for key in node:
        name = f"{prefix}{key}"
        if key in skip:
            continue
        if OmegaConf.is_missing(node, key):
            accepts = f": it must be {specs[key].text}" if key in specs else f"; give it, {name}=VALUE"
            raise AlsegError(f"{name} is not set{accepts}")
        value = _value(node, key, name)
        nested = {s.removeprefix(f"{key}."): a for s, a in specs.items() if s.startswith(f"{key}.")}
        if nested and isinstance(value, dict):
            _check_keys(node[key], nested, f"{name}.", where, closed=closed)
        elif key in specs:
            if not specs[key].test(value):
                raise AlsegError(f"{name} must be {specs[key].text}, got {_show(value)}")
        elif closed and key not in foreign:
            raise AlsegError(f"{name} is not a key of {where}; its keys are {', '.join((*skip, *specs))}")


def _value(node: DictConfig, key: str, name: str) -> Any:
    """`node[key]` as plain Python; an AlsegError naming the key when it cannot be resolved."""
    try:
        value = node[key]
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    except OmegaConfBaseException as exc:
        raise AlsegError(f"{name} cannot be resolved: {str(exc).splitlines()[0]}") from exc


def _show(value: Any) -> str:
    """A value as the command line writes it (null, true, [32, 48], "abc")."""
    return json.dumps(value, default=repr)


def _check_train(t: DictConfig) -> None:
    if t.epochs is not None and t.iterations is not None:
        raise AlsegError(f"train.epochs={t.epochs} and train.iterations={t.iterations} are both set: set the one "
                         "you do not use to null (e.g. train.epochs=null to train a number of iterations)")
    if t.epochs is None and t.iterations is None:
        raise AlsegError("train.epochs and train.iterations are both null: set one (e.g. train.epochs=10)")


def _check_model(m: DictConfig) -> None:
    if not m.get("freeze_encoder"):
        return
    if "_target_" in m:
        raise AlsegError("model.freeze_encoder=true freezes the encoder of alseg's own models; with model._target_, "
                         "freeze your model's layers in your factory (requires_grad_(False)) instead")
    if m.encoder_weights is None:
        raise AlsegError("model.freeze_encoder=true would keep the encoder's random initial weights: set "
                         "model.encoder_weights (imagenet or a local file), or model.freeze_encoder=false")


def _check_annotation(cfg: DictConfig) -> None:
    """Rules joining the annotation with the region type (region=adaptive, annotation.sieve) and
    with the loss (train.class_weights)."""
    annotation, region = cfg.annotation.name, cfg.region.name
    if region == "adaptive" and annotation != "dominant":
        raise AlsegError(f"region=adaptive merges its regions anew every cycle and asks each with one dominant click: "
                         f"use annotation=dominant, not {annotation}")
    if annotation == "multiclass" and cfg.train.get("class_weights", "none") != "none":
        raise AlsegError(f"train.class_weights={cfg.train.class_weights} weights single-class labels; annotation=multiclass "
                         "trains with the merged positive loss over label sets: set train.class_weights=none")
    if not cfg.annotation.get("sieve", False):
        return
    if annotation != "dominant":
        raise AlsegError(f"annotation.sieve=true drops doubtful pixels of dominantly labelled regions: use it with "
                         f"annotation=dominant, not {annotation} (or set annotation.sieve=false)")
    if region == "pixel":
        raise AlsegError("annotation.sieve=true sieves the pixels of each labelled region: use a region type with a map "
                         "(adaptive, seeds, slic, box, image), not pixel (or set annotation.sieve=false)")


def _check_strategy(cfg: DictConfig) -> None:
    """Rules joining strategy keys with each other and with model, region and budget."""
    from alseg.strategies import STRATEGIES, strategy_class

    s = cfg.strategy
    kind = strategy_class(s)
    if s.class_balance and not kind.needs_model:
        raise AlsegError("strategy.class_balance weights model scores by predicted class: use it with a model-based strategy, not random")
    if s.top_percent is not None and kind.uses_embeddings:
        raise AlsegError(f"strategy.top_percent samples at random among the top regions: it cannot be combined with {s.name}")
    if kind.uses_embeddings and cfg.region.name == "pixel" and cfg.budget.name == "clicks":
        raise AlsegError(f"{s.name} with region=pixel works per image: use budget=per_image, or a region type with a map")
    committee = s.get("committee")
    if committee == "models" and s.members < 2:
        raise AlsegError(f"strategy.members must be >= 2 with strategy.committee=models, got {s.members}")
    ensemble = int(cfg.train.get("ensemble", 1))
    if committee == "models" and ensemble > 1 and s.members != ensemble:
        raise AlsegError(f"with train.ensemble={ensemble} the committee is the ensemble's members: set "
                         f"strategy.members={ensemble} (or strategy.committee=dropout), got {s.members}")
    scorer = STRATEGIES[s.uncertainty] if "uncertainty" in s else kind
    if not (scorer.multi_pass or s.get("mc")) or committee == "models":
        return
    why = "strategy.mc=true" if s.get("mc") else f"strategy.committee={committee}" if committee else \
        f"{scorer.__name__} scores stochastic passes"
    if s.passes < 2:
        raise AlsegError(f"strategy {s.name} needs MC dropout ({why}): strategy.passes must be >= 2, one pass "
                         f"cannot rank by disagreement; got {s.passes}")
    if "_target_" not in cfg.model and not cfg.model.dropout:
        raise AlsegError(f"strategy {s.name} needs MC dropout ({why}): model.dropout must be > 0 (e.g. "
                         f"model.dropout=0.2), got {_show(cfg.model.dropout)}")
