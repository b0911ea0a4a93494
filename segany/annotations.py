"""Annotation files: the SA-1B per-image JSON and the COCO instances JSON, read and written.

Every annotation segany hands around is a dict with ``segmentation`` as COCO RLE (``str``
counts), ``bbox`` as XYWH and ``area``; any other keys (scores, prompts, crop boxes ...) ride
along untouched. Files from elsewhere may store polygons or uncompressed RLE: readers turn
them into compressed RLE through pycocotools, so consumers only ever see one form. Writers go
through :func:`segany.io.atomic_write`, so an interrupted job never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from segany.io import atomic_write
from segany.masks import decode_rle, encode_rle

DEFAULT_CATEGORIES = [{"id": 1, "name": "object", "supercategory": "object"}]


def write_sa1b_json(path: str | os.PathLike, image_info: dict, annotations: list[dict]) -> None:
    """Write one image's annotations in the SA-1B layout: ``{"image": ..., "annotations": [...]}``."""
    height, width = image_size(image_info, path)
    records = [normalize_annotation(annotation, height, width, path) for annotation in annotations]
    write_json(path, {"image": dict(image_info), "annotations": records})


def read_sa1b_json(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Read an SA-1B per-image JSON as ``(image_info, annotations)`` with RLE segmentations."""
    content = read_json(path)
    if not isinstance(content, dict) or "image" not in content or "annotations" not in content:
        raise ValueError(f"{path} is not an SA-1B annotation file: expected the keys 'image' and 'annotations'")
    image_info = content["image"]
    height, width = image_size(image_info, path)
    annotations = [normalize_annotation(annotation, height, width, path) for annotation in content["annotations"]]
    return image_info, annotations


def coco_instances(
    images: list[dict], annotations: list[list[dict]], categories: list[dict] | None = None
) -> dict:
    """Assemble a COCO instances dict from per-image infos and annotation lists.

    Images are numbered 1..N and annotations 1..M in the order given; categories without an
    ``id`` get 1..K. An annotation keeps its ``category_id`` when it names a known category,
    otherwise it joins the first one (by default the single category "object").
    """
    if len(images) != len(annotations):
        raise ValueError(f"got {len(images)} images but {len(annotations)} annotation lists: expected one list per image")
    categories = [
        {**category, "id": category.get("id", number)} for number, category in enumerate(categories or DEFAULT_CATEGORIES, 1)
    ]
    known_categories = {category["id"] for category in categories}
    coco_images, coco_annotations = [], []
    for image_id, (info, per_image) in enumerate(zip(images, annotations), 1):
        height, width = image_size(info, f"image {info.get('file_name', image_id)}")
        coco_images.append({**{k: v for k, v in info.items() if k not in ("id", "image_id")}, "id": image_id})
        for annotation in per_image:
            record = normalize_annotation(annotation, height, width, f"image {info.get('file_name', image_id)}")
            category = record.get("category_id")
            record["category_id"] = category if category in known_categories else categories[0]["id"]
            record["id"] = len(coco_annotations) + 1
            record["image_id"] = image_id
            record.setdefault("iscrowd", 0)
            coco_annotations.append(record)
    return {"images": coco_images, "annotations": coco_annotations, "categories": categories}


def write_coco_json(path: str | os.PathLike, coco: dict) -> None:
    """Write a COCO instances dict (as made by :func:`coco_instances`) atomically."""
    missing = [key for key in ("images", "annotations") if key not in coco]
    if missing:
        raise ValueError(f"a COCO instances dict needs the keys 'images' and 'annotations'; missing {missing}")
    write_json(path, coco)


def read_coco_json(path: str | os.PathLike) -> dict[Any, tuple[dict, list[dict]]]:
    """Read a COCO instances JSON as ``{image_id: (image_info, annotations)}``, in file order.

    Images without annotations are kept (with an empty list); segmentations come back as
    compressed RLE whatever the file stored.
    """
    content = read_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError(f"{path} is not a COCO instances file: expected an 'images' list")
    if not isinstance(content.get("annotations", []), list):
        raise ValueError(f"{path} is not a COCO instances file: 'annotations' must be a list")
    dataset: dict[Any, tuple[dict, list[dict]]] = {}
    for info in content["images"]:
        if "id" not in info:
            raise ValueError(f"{path}: an image entry has no 'id': {info}")
        dataset[info["id"]] = (info, [])
    for annotation in content.get("annotations", []):
        entry = dataset.get(annotation.get("image_id"))
        if entry is None:
            raise ValueError(f"{path}: annotation {annotation.get('id')} refers to an unknown image_id {annotation.get('image_id')!r}")
        info, per_image = entry
        height, width = image_size(info, path)
        per_image.append(normalize_annotation(annotation, height, width, path))
    return dataset


def normalize_annotation(annotation: dict, height: int, width: int, source: Any = "annotation") -> dict:
    """A copy of ``annotation`` with ``segmentation`` as compressed RLE and ``bbox``/``area`` filled in.

    ``segmentation`` may be a bool/0-1 array, a compressed or uncompressed RLE dict, or COCO
    polygons; ``bbox`` and ``area`` are computed from the mask only when absent.
    """
    if "segmentation" not in annotation:
        raise ValueError(f"{source}: an annotation has no 'segmentation': {sorted(annotation)}")
    record = dict(annotation)
    record["segmentation"] = to_rle(annotation["segmentation"], height, width, source)
    if "bbox" not in record or "area" not in record:
        compressed = {**record["segmentation"], "counts": record["segmentation"]["counts"].encode("ascii")}
        record.setdefault("bbox", [float(v) for v in coco_mask.toBbox(compressed)])
        record.setdefault("area", int(coco_mask.area(compressed)))
    return record


def to_rle(segmentation: Any, height: int, width: int, source: Any = "annotation") -> dict:
    """Any COCO segmentation (array, RLE with str/bytes/list counts, polygons) as RLE with str counts."""
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (height, width):
            raise ValueError(f"{source}: a mask of shape {segmentation.shape} does not match the image ({height}, {width})")
        return encode_rle(segmentation.astype(bool))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"{source}: an RLE of size {segmentation['size']} does not match the image ({height}, {width})")
        counts = segmentation["counts"]
        if isinstance(counts, str):
            return {"size": [height, width], "counts": counts}
        if isinstance(counts, bytes):
            return {"size": [height, width], "counts": counts.decode("ascii")}
        return encode_rle(decode_rle(segmentation))
    if isinstance(segmentation, list) and all(isinstance(polygon, list) for polygon in segmentation):
        if not segmentation or any(len(polygon) < 6 or len(polygon) % 2 for polygon in segmentation):
            raise ValueError(f"{source}: a polygon segmentation needs lists of at least 3 (x, y) pairs")
        merged = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        return {"size": [height, width], "counts": merged["counts"].decode("ascii")}
    raise ValueError(f"{source}: unsupported segmentation {type(segmentation).__name__}: expected an RLE dict, polygons or a mask array")


def image_size(image_info: dict, source: Any) -> tuple[int, int]:
    """``(height, width)`` of an image entry, which every annotation file must record."""
    try:
        return int(image_info["height"]), int(image_info["width"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{source}: the image entry needs integer 'height' and 'width', got {image_info!r}") from None


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read annotation file {path}: not valid JSON ({error})") from None


def write_json(path: str | os.PathLike, content: Any) -> None:
    """Write JSON atomically; numpy scalars and arrays become plain numbers and lists."""
    with atomic_write(path, "w") as stream:
        json.dump(content, stream, default=plain_json_value)


def plain_json_value(value: Any) -> Any:
    """``json.dump``'s fallback for numpy (and torch) values that the generator's records carry."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} to JSON")
