"""`dataset=folder`: your own images and masks, in a plain folder.

    ROOT/images/<stem>.png|jpg|jpeg|tif|tiff   RGB or greyscale images (greyscale becomes 3 channels)
    ROOT/masks/<stem>.png (or .tif|.tiff)      one mask per image, same stem
    ROOT/splits/train.txt, splits/val.txt      optional: one stem per line; without splits/,
                                               dataset.val_fraction of the images (drawn with
                                               dataset.split_seed) form the val split

Masks are class-index images (`dataset.palette: null`: value c = class c, the value
`dataset.ignore_index` = void; a palette PNG is read as its indices) or colour images
(`dataset.palette`: one [r, g, b] per class; `dataset.ignore_color` = void). Class names come
from `dataset.class_names`. Everything else (resizing to `dataset.size`, the cache, `alseg data`,
the error messages) is the shared `DiskDataset` machinery of the built-in datasets.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from alseg.data.base import IGNORE, SegDataset
from alseg.data.decode import DiskDataset, Item, label_table
from alseg.data.read import decode_cv2, decode_pil
from alseg.data.voc import voc_colormap
from alseg.errors import AlsegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")

LAYOUT = """\
  ROOT/images/NAME.png|.jpg|.jpeg|.tif|.tiff   RGB or greyscale images
  ROOT/masks/NAME.png (or .tif/.tiff)          one mask per image, same NAME: class indices
                                               (dataset.palette: null) or colours (dataset.palette set)
  ROOT/splits/train.txt, ROOT/splits/val.txt   optional, one NAME per line; without splits/,
                                               dataset.val_fraction of the images go to val
                                               (drawn with dataset.split_seed)
See docs/extending.md, "Your own images and masks"."""


def _plain(value):
    """A config value as plain Python (lists, not ListConfig)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _setting(cfg, key: str, default=None):
    """`dataset.<key>`; an AlsegError when it is required and not set (`???`)."""
    if isinstance(cfg, DictConfig) and key in cfg and OmegaConf.is_missing(cfg, key):
        return "???"
    return _plain(cfg.get(key, default))


def _colour(value, what: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise AlsegError(f"{what} must be [r, g, b] with integers 0-255, got {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    """One int32 per colour: r << 16 | g << 8 | b."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class Folder(DiskDataset):
    """A folder of images and masks, configured by the `dataset` group (class names, palette, ...)."""

    name = "folder"
    title = "dataset=folder"
    splits = ("train", "val")
    eval_splits = ("val",)
    layout = LAYOUT

    def __init__(self, cfg) -> None:
        names = _setting(cfg, "class_names")
        if names in (None, "???") or not isinstance(names, list) or not names:
            raise AlsegError("dataset=folder needs the class names: pass dataset.class_names=[name0,name1,...] "
                             "(mask value / palette entry c is class c)")
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise AlsegError(f"dataset.class_names must be distinct; {', '.join(twice)} appear more than once")
        if len(names) > 255:
            raise AlsegError(f"dataset.class_names lists {len(names)} classes; at most 255 fit in uint8 labels")
        self.class_names = tuple(names)
        num = len(names)

        palette = _setting(cfg, "palette")
        self.colour_masks = palette is not None
        if self.colour_masks:
            if not isinstance(palette, list) or len(palette) != num:
                raise AlsegError(f"dataset.palette must list one [r, g, b] per class ({num} for dataset.class_names), "
                                 f"got {palette!r}; or null for masks that hold class indices")
            colours = [_colour(c, f"dataset.palette[{i}] ({names[i]})") for i, c in enumerate(palette)]
            if len(set(colours)) != num:
                raise AlsegError(f"dataset.palette gives two classes the same colour: {palette}")
            ignore = _setting(cfg, "ignore_color")
            self.ignore_color = None if ignore is None else _colour(ignore, "dataset.ignore_color")
            if self.ignore_color in colours:
                raise AlsegError(f"dataset.ignore_color {list(self.ignore_color)} is also the colour of class "
                                 f"{names[colours.index(self.ignore_color)]} in dataset.palette")
            self.palette = np.array(colours, np.uint8)
            self.keys = _rgb_key(self.palette)  # colour key -> class, via a sorted search
            self.order = np.argsort(self.keys)
            self.ignore_index = None
            # read_label already yields class indices and 255 for ignore_color
            self.table = label_table({**{c: c for c in range(num)}, IGNORE: IGNORE})
        else:
            ignore = _setting(cfg, "ignore_index", IGNORE)
            if ignore is not None and (not isinstance(ignore, int) or isinstance(ignore, bool)
                                       or not num <= ignore <= 255):
                raise AlsegError(f"dataset.ignore_index must be a mask value in {num}-255 (the classes are 0-{num - 1}) "
                                 f"or null, got {ignore!r}")
            self.ignore_index = ignore
            self.ignore_color = None
            self.palette = voc_colormap(num)  # for the overlays only
            self.table = label_table({**{c: c for c in range(num)}, **({} if ignore is None else {ignore: IGNORE})})

        fraction, seed = _setting(cfg, "val_fraction", 0.2), _setting(cfg, "split_seed", 0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise AlsegError(f"dataset.val_fraction must be a number in (0, 1), got {fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise AlsegError(f"dataset.split_seed must be an integer, got {seed!r}")
        self.val_fraction, self.split_seed = float(fraction), int(seed)

    # ---- layout ------------------------------------------------------------------------
    def root(self, cfg) -> Path:
        if cfg.get("root") in (None, ""):
            raise AlsegError(f"dataset.root is not set: pass dataset.root=PATH, the folder of your images and masks, "
                             f"laid out as\n{self.layout}")
        return super().root(cfg)

    def split_present(self, cfg, split: str) -> bool:
        return split in self.splits

    def key_options(self, cfg, split: str) -> dict:
        """What decides the decoded labels besides the files (which split lists / the val draw decide)."""
        return {"num_classes": len(self.class_names), "ignore_index": self.ignore_index,
                "palette": self.palette.tolist() if self.colour_masks else None,
                "ignore_color": None if self.ignore_color is None else list(self.ignore_color)}

    def files(self, folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
        """stem -> file, for the files in `folder` with one of `suffixes` (any case)."""
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in suffixes and path.is_file():
                if path.stem in found:
                    raise AlsegError(f"{self.title}: {found[path.stem]} and {path} have the same name; "
                                     f"every {what} needs a distinct NAME (images/NAME.* goes with masks/NAME.png)")
                found[path.stem] = path
        return found

    def images(self, cfg) -> dict[str, Path]:
        """stem -> image file, every image in ROOT/images/."""
        folder = self.require(self.root(cfg) / "images")
        found = self.files(folder, IMAGE_SUFFIXES, "image")
        if not found:
            raise self.missing(folder, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found

    def stems(self, cfg, split: str, images: dict[str, Path]) -> list[str]:
        """The image names of `split`: from ROOT/splits/<split>.txt, or drawn with the seed."""
        lists = self.root(cfg) / "splits"
        if lists.is_dir():
            listed = {}
            for part in self.splits:
                listing = self.require(lists / f"{part}.txt", is_dir=False)
                stems = []
                for line in listing.read_text(errors="surrogateescape").splitlines():  # names as os.listdir gives them
                    name = line.strip()
                    if name and not name.startswith("#"):
                        name = Path(name).name
                        stems.append(Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name)
                if not stems:
                    raise self.missing(listing, "lists no images")
                unknown = [s for s in stems if s not in images]
                if unknown:
                    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
                    raise AlsegError(f"{self.title}: {listing} lists {unknown[0]!r}{more}, but "
                                     f"{self.root(cfg) / 'images'} holds no image of that name")
                listed[part] = stems
            both = sorted(set(listed["train"]) & set(listed["val"]))
            if both:
                raise AlsegError(f"{self.title}: {both[0]!r}" + (f" (and {len(both) - 1} more)" if len(both) > 1 else "")
                                 + f" is listed in both {lists / 'train.txt'} and {lists / 'val.txt'}")
            return listed[split]
        if not 0 < self.val_fraction < 1:
            raise AlsegError(f"dataset.val_fraction must be in (0, 1), got {self.val_fraction}")
        stems = sorted(images)
        if len(stems) < 2:
            raise self.missing(self.root(cfg) / "images", f"holds {len(stems)} image; a train and a val split need 2 or more")
        n_val = min(len(stems) - 1, max(1, round(self.val_fraction * len(stems))))
        order = np.random.default_rng(self.split_seed).permutation(len(stems))
        chosen = order[:n_val] if split == "val" else order[n_val:]
        return [stems[i] for i in sorted(chosen)]

    def items(self, cfg, split: str) -> list[Item]:
        if split not in self.splits:
            raise AlsegError(f"{self.title} has the splits {', '.join(self.splits)}, not {split!r}")
        images = self.images(cfg)
        masks = self.require(self.root(cfg) / "masks")
        found = self.files(masks, MASK_SUFFIXES, "mask")
        items, absent = [], []
        for stem in self.stems(cfg, split, images):
            if stem not in found:
                absent.append(stem)
            items.append(Item(images[stem], found.get(stem)))
        if absent:
            more = f" (and {len(absent) - 1} more images)" if len(absent) > 1 else ""
            raise self.missing(masks / f"{absent[0]}.png",
                               f"does not exist: image {images[absent[0]]} has no mask{more}; "
                               "every image needs masks/NAME.png (or .tif)")
        return items

    # ---- labels ------------------------------------------------------------------------
    def read_label(self, path: Path) -> np.ndarray:
        return self.read_colour_mask(path) if self.colour_masks else read_index_mask(path)

    def read_colour_mask(self, path: Path) -> np.ndarray:
        """uint8 [H, W] class indices (255 for ignore_color) of a colour mask; an error naming an unknown colour."""
        bgr = decode_cv2(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, "mask")
        keys = _rgb_key(bgr[..., ::-1])
        colours, inverse = np.unique(keys, return_inverse=True)
        classes = np.full(len(colours), -1, np.int32)
        where = np.searchsorted(self.keys, colours, sorter=self.order).clip(0, len(self.keys) - 1)
        match = self.keys[self.order[where]] == colours
        classes[match] = self.order[where[match]]
        if self.ignore_color is not None:
            classes[colours == _rgb_key(np.array(self.ignore_color))] = IGNORE
        if (classes < 0).any():
            bad = colours[classes < 0]
            rgb = [[int(k >> 16), int(k >> 8 & 255), int(k & 255)] for k in bad[:6]]
            y, x = np.argwhere(keys == bad[0])[0]
            allowed = ", ".join(f"{n} {list(map(int, c))}" for n, c in zip(self.class_names, self.palette))
            if self.ignore_color is not None:
                allowed += f", void {list(self.ignore_color)}"
            raise AlsegError(f"mask {path} holds colour {rgb[0]} (first at row {y}, column {x})"
                             + (f" and {len(bad) - 1} more unknown colours ({', '.join(map(str, rgb[1:]))}"
                                f"{', ...' if len(bad) > 6 else ''})" if len(bad) > 1 else "")
                             + f", which is not in dataset.palette (allowed: {allowed}; set dataset.ignore_color "
                               "for a void colour)")
        return classes[inverse].reshape(keys.shape).astype(np.uint8)

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        try:
            return super().map_labels(raw, path)
        except AlsegError as exc:  # say which setting decides what is allowed
            classes = "0" if len(self.class_names) == 1 else f"0-{len(self.class_names) - 1}"
            raise AlsegError(f"{exc}; mask values are class indices {classes} (dataset.class_names)"
                             + (f" and {self.ignore_index} (dataset.ignore_index, void)" if self.ignore_index is not None
                                else "")) from None


def read_index_mask(path: Path) -> np.ndarray:
    """uint8 [H, W] values of a class-index mask: greyscale, palette (read as indices) or grey RGB."""
    img = decode_pil(path, "mask")
    mode, values = img.mode, np.array(img)
    if values.ndim == 3:
        if values.shape[2] in (3, 4) and (values[..., 0] == values[..., 1]).all() and (values[..., 0] == values[..., 2]).all():
            values = values[..., 0]
        else:
            raise AlsegError(f"mask {path} is a colour image (mode {mode}); with dataset.palette: null masks hold one "
                             "class index per pixel; for colour masks give dataset.palette (one [r, g, b] per class)")
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if values.dtype != np.uint8:
        if np.issubdtype(values.dtype, np.integer) and values.size and 0 <= values.min() and values.max() <= 255:
            values = values.astype(np.uint8)  # 16-bit masks with small values are fine
        else:
            raise AlsegError(f"mask {path} has {values.dtype} pixels (mode {mode}) with values beyond 0-255; "
                             "expected uint8 class indices")
    return np.ascontiguousarray(values)


def load(cfg) -> SegDataset:
    """The `dataset=folder` loader for the DATASETS registry."""
    return Folder(cfg).load(cfg)
