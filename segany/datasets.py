"""One loader for every dataset layout that evaluation and training read.

:func:`open_dataset` looks at a path and picks the layout:

- a COCO instances ``.json`` file (images beside it, in ``images/``, or in ``images_dir``);
- an SA-1B folder: per-image JSON files beside (or named like) their images;
- a folder pairing an image subfolder with a mask subfolder, as the interactive-segmentation
  benchmarks ship them (see :data:`MASK_FOLDER_LAYOUTS`): one binary PNG per object
  (COCO-MVal ``img/`` + ``gt/``; GrabCut ``data_GT/`` + ``boundary_GT/`` whose value 128 is an
  uncertain band to ignore) or one instance-id PNG per image (each non-zero id an object);
- the data engine's annotation database (``.sqlite``).

Whatever the layout, a :class:`MaskDataset` is a sequence of :class:`Sample` objects with the
same fields. Masks are decoded when a sample is used, not when the dataset opens, because
datasets can hold millions of them. Files that are missing when the dataset opens are logged
and left out; files that turn out to be corrupt raise ``ValueError`` when read, and
:func:`readable_samples` logs and skips those.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from segany.annotations import read_coco_json, read_sa1b_json
from segany.io import IMAGE_SUFFIXES, read_image
from segany.masks import decode_rle

log = logging.getLogger("segany.datasets")

Targets = tuple[list[np.ndarray], np.ndarray | None]  # object masks, ignored pixels
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
OBJECT_NUMBER = re.compile(r"^(?P<stem>.+?)[_-](?P<number>\d+)$")  # NAME_3.png: NAME's object 3


@dataclass(frozen=True)
class MaskFolderLayout:
    """A benchmark layout: images in one subfolder, their ground truth in another."""

    images: str
    masks: str
    instance_ids: bool  # one PNG per image holding object ids, rather than one binary PNG per object
    ignore_value: int | None = None  # the mask value that marks pixels to leave out of the scores


MASK_FOLDER_LAYOUTS = (
    MaskFolderLayout("img", "gt", instance_ids=False),  # COCO-MVal, DAVIS, SBD as RITM ships them
    MaskFolderLayout("images", "masks", instance_ids=False),  # Berkeley
    MaskFolderLayout("data_GT", "boundary_GT", instance_ids=False, ignore_value=128),  # GrabCut
    MaskFolderLayout("JPEGImages", "SegmentationObject", instance_ids=True, ignore_value=255),  # PASCAL VOC
    MaskFolderLayout("images", "instances", instance_ids=True),
)


@dataclass
class Sample:
    """One image and its ground-truth objects; pixels and masks are read on first use."""

    id: Any
    image_path: Path
    read_targets: Callable[[], Targets] = field(repr=False)

    def read_image(self) -> np.ndarray:
        """The image as RGB uint8 (ValueError if the file is corrupt)."""
        return read_image(self.image_path)

    @cached_property
    def image(self) -> np.ndarray:
        return self.read_image()

    @cached_property
    def _targets(self) -> Targets:
        return self.read_targets()

    @property
    def masks(self) -> list[np.ndarray]:
        """One bool HxW mask per object."""
        return self._targets[0]

    @property
    def ignore(self) -> np.ndarray | None:
        """Bool HxW of pixels that no score counts (GrabCut's uncertain band), or None."""
        return self._targets[1]


class MaskDataset(Sequence):
    """The samples of one dataset, whatever its layout; ``layout`` names the one detected."""

    def __init__(self, source: Path, layout: str, samples: list[Sample]) -> None:
        self.source = source
        self.layout = layout
        self._samples = samples

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return MaskDataset(self.source, self.layout, self._samples[index])
        return self._samples[index]

    def __repr__(self) -> str:
        return f"MaskDataset({str(self.source)!r}, layout={self.layout!r}, {len(self)} images)"


def open_dataset(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> MaskDataset:
    """Open the dataset at ``path``, detecting its layout (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    images_dir = Path(images_dir) if images_dir is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return open_coco(path, images_dir)
        if path.suffix.lower() in SQLITE_SUFFIXES:
            return open_annotation_database(path)
        raise ValueError(f"cannot open dataset file {path}: expected a COCO instances .json or an annotation .sqlite")
    for layout in MASK_FOLDER_LAYOUTS:
        if (path / layout.images).is_dir() and (path / layout.masks).is_dir():
            return open_mask_folder(path, layout)
    if next(path.rglob("*.json"), None) is not None:
        return open_sa1b(path, images_dir)
    pairs = ", ".join(f"{layout.images}/ + {layout.masks}/" for layout in MASK_FOLDER_LAYOUTS)
    raise ValueError(
        f"cannot tell the dataset layout of {path}: expected a COCO .json file, an annotation .sqlite, "
        f"a folder of SA-1B JSON files, or a folder with one of the subfolder pairs {pairs}"
    )


def readable_samples(dataset: Sequence[Sample]) -> Iterator[tuple[Sample, np.ndarray]]:
    """``(sample, image)`` for every sample whose image and masks load and agree in size.

    The others are logged and skipped, so that one bad file does not end a long run.
    """
    for sample in dataset:
        try:
            image = sample.read_image()
            masks, ignore = sample.masks, sample.ignore
        except (OSError, ValueError) as error:
            log.warning("skipping %s: %s", sample.image_path, error)
            continue
        shapes = {mask.shape for mask in masks} | ({ignore.shape} if ignore is not None else set())
        if shapes - {image.shape[:2]}:
            log.warning("skipping %s: masks of shape %s do not match the image %s",
                        sample.image_path, sorted(shapes), image.shape[:2])
            continue
        yield sample, image


# -- COCO and SA-1B JSON -------------------------------------------------------------------


def open_coco(path: Path, images_dir: Path | None) -> MaskDataset:
    """A COCO instances file; crowd regions are not objects, they are ignored pixels."""
    folders = [images_dir] if images_dir else [path.parent, path.parent / "images", path.parent.parent]
    samples, missing = [], []
    for image_id, (info, records) in read_coco_json(path).items():
        file_name = info.get("file_name")
        image_path = find_file(folders, file_name) if file_name else None
        if image_path is None:
            missing.append(str(file_name))
            continue
        samples.append(Sample(image_id, image_path, partial(decode_annotations, records)))
    report_missing(missing, f"images listed in {path} are missing")
    return MaskDataset(path, "coco", samples)


def open_sa1b(folder: Path, images_dir: Path | None) -> MaskDataset:
    """SA-1B folder: ``NAME.json`` beside ``NAME.jpg`` (or naming its image in ``image.file_name``)."""
    samples, missing = [], []
    for json_path in sorted(folder.rglob("*.json")):
        relative = json_path.relative_to(folder).with_suffix("")
        image_path = find_image(json_path.with_suffix(""))
        if image_path is None and images_dir is not None:
            image_path = find_image(images_dir / relative)
        if image_path is None:
            image_path = image_named_by(json_path, [images_dir] if images_dir else [folder, folder.parent])
            if image_path is False:  # not an SA-1B file (e.g. a settings file): not part of the dataset
                continue
        if image_path is None:
            missing.append(relative.as_posix())
            continue
        samples.append(Sample(relative.as_posix(), image_path, partial(read_sa1b_targets, json_path)))
    report_missing(missing, f"SA-1B files in {folder} have no image")
    return MaskDataset(folder, "sa1b", samples)


def image_named_by(json_path: Path, folders: list[Path]) -> Path | None | bool:
    """The image an SA-1B JSON names in ``image.file_name``; None if absent, False if not SA-1B."""
    try:
        info, _ = read_sa1b_json(json_path)
    except ValueError as error:
        if "not an SA-1B annotation file" not in str(error):
            log.warning("skipping %s: %s", json_path, error)
        return False
    file_name = info.get("file_name")
    return find_file(folders, file_name) if file_name else None


def read_sa1b_targets(json_path: Path) -> Targets:
    _, annotations = read_sa1b_json(json_path)
    return decode_annotations(annotations)


def decode_annotations(annotations: list[dict]) -> Targets:
    """Object masks of annotations; crowd annotations become ignored pixels instead."""
    masks = [decode_rle(a["segmentation"]) for a in annotations if not a.get("iscrowd")]
    crowds = [decode_rle(a["segmentation"]) for a in annotations if a.get("iscrowd")]
    return masks, np.logical_or.reduce(crowds) if crowds else None


# -- the data engine's database ------------------------------------------------------------


def open_annotation_database(path: Path) -> MaskDataset:
    """The accepted objects of a data-engine database, through the engine's own reader."""
    from segany.engine.store import training_records

    samples, missing = [], []
    for image_path, rles in training_records(path):
        if not Path(image_path).is_file():
            missing.append(str(image_path))
            continue
        samples.append(Sample(str(image_path), Path(image_path), partial(decode_rles, rles)))
    report_missing(missing, f"images of the annotation database {path} are missing")
    return MaskDataset(path, "sqlite", samples)


def decode_rles(rles: list[dict]) -> Targets:
    return [decode_rle(rle) for rle in rles], None


# -- image + mask PNG folders --------------------------------------------------------------


def open_mask_folder(folder: Path, layout: MaskFolderLayout) -> MaskDataset:
    """Images in ``layout.images``, ground truth named after them in ``layout.masks``.

    Binary masks are ``NAME.png`` for one object, or ``NAME_1.png``, ``NAME_2.png``... for
    several; instance-id PNGs are ``NAME.png``.
    """
    images = files_by_stem(folder / layout.images)
    masks = files_by_stem(folder / layout.masks)
    per_image: dict[str, list[tuple[int, Path]]] = {stem: [] for stem in images}
    for stem, mask_path in masks.items():
        numbered = OBJECT_NUMBER.match(stem)
        if stem in images:
            per_image[stem].append((0, mask_path))
        elif numbered and numbered["stem"] in images and not layout.instance_ids:
            per_image[numbered["stem"]].append((int(numbered["number"]), mask_path))
        else:
            log.warning("ignoring %s: no image named like it in %s", mask_path, folder / layout.images)
    reader = read_instance_ids if layout.instance_ids else read_object_masks
    samples, unmatched = [], []
    for stem, image_path in images.items():
        if not per_image[stem]:
            unmatched.append(stem)
            continue
        mask_paths = [path for _, path in sorted(per_image[stem])]
        samples.append(Sample(stem, image_path, partial(reader, mask_paths, layout.ignore_value)))
    report_missing(unmatched, f"images have no ground-truth mask in {folder / layout.masks}")
    return MaskDataset(folder, f"{layout.images}+{layout.masks}", samples)


def read_object_masks(paths: list[Path], ignore_value: int | None) -> Targets:
    """One object per binary PNG (non-zero = object); ``ignore_value`` pixels are ignored."""
    masks, ignore = [], None
    for path in paths:
        values = read_label_image(path)
        if ignore_value is not None and (values == ignore_value).any():
            band = values == ignore_value
            ignore = band if ignore is None else ignore | band
            values = np.where(band, 0, values)
        masks.append(values != 0)
    return masks, ignore


def read_instance_ids(paths: list[Path], ignore_value: int | None) -> Targets:
    """Each non-zero id of the one PNG is an object, in id order; ``ignore_value`` is ignored."""
    (path,) = paths
    values = read_label_image(path)
    ignore = values == ignore_value if ignore_value is not None else None
    ids = [value for value in np.unique(values) if value != 0 and value != ignore_value]
    return [values == value for value in ids], ignore if ignore is not None and ignore.any() else None


def read_label_image(path: Path) -> np.ndarray:
    """A mask image's raw values as 2-D ints; a colour PNG's colours become 24-bit ids."""
    try:
        with Image.open(path) as image:
            values = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read mask {path}: not an image or the file is corrupt ({error})") from None
    if values.ndim == 3:
        rgb = values[..., :3].astype(np.int64)
        if (rgb == rgb[..., :1]).all():  # a grey image stored as colour
            return rgb[..., 0]
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return values.astype(np.int64)


# -- finding files -------------------------------------------------------------------------


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files below ``folder`` keyed by their relative path without suffix."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            stem = path.relative_to(folder).with_suffix("").as_posix()
            if stem in found:
                log.warning("ignoring %s: %s has the same name", path, found[stem])
                continue
            found[stem] = path
    return found


def find_image(stem_path: Path) -> Path | None:
    """The image file ``stem_path`` + one of the image suffixes (any case), if it exists."""
    if not stem_path.parent.is_dir():
        return None
    for candidate in sorted(stem_path.parent.glob(f"{glob_escape(stem_path.name)}.*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
            return candidate
    return None


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def find_file(folders: list[Path], relative: str) -> Path | None:
    """The first ``folder / relative`` that exists."""
    for folder in folders:
        candidate = folder / relative
        if candidate.is_file():
            return candidate
    return None


def report_missing(names: list[str], problem: str) -> None:
    """One warning for all the entries left out for the same reason, naming the first few."""
    if names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        log.warning("skipping %d: %s: %s", len(names), problem, shown)
