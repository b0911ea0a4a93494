"""Moving annotations in and out of the store: COCO instances files and SA-1B per-image files.

Export takes every accepted object; import matches images by their path relative to the
images folder and skips masks already stored on that image, so an interrupted or repeated
import never duplicates objects. Importing machine-made masks (e.g. ``segany auto`` output)
with ``source="prefilled"`` puts them up for review in the app: the semi-automatic stage at
the scale of a whole folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from segany.annotations import (
    coco_instances,
    read_coco_json,
    read_json,
    read_sa1b_json,
    write_coco_json,
    write_sa1b_json,
)
from segany.engine.store import SOURCES, AnnotationStore, ImageRecord, ObjectRecord

UNLABELLED = "object"  # COCO needs a category: objects accepted without a label get this one


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0
    unknown_images: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"added {self.added} objects, skipped {self.duplicates} already stored"
        if self.unknown_images:
            shown = ", ".join(self.unknown_images[:3]) + (" ..." if len(self.unknown_images) > 3 else "")
            line += f"; {len(self.unknown_images)} image(s) not in the images folder: {shown}"
        return line


def _annotated(store: AnnotationStore) -> list[tuple[ImageRecord, list[ObjectRecord]]]:
    return [(image, store.objects(image.id)) for image in store.images()]


def _record(obj: ObjectRecord) -> dict:
    """An object as an annotation record (the fields both formats share, plus what the engine tracked)."""
    return {"segmentation": obj.rle, "area": obj.area, "bbox": obj.bbox, "label": obj.label, "source": obj.source,
            "seconds": obj.seconds, "predicted_iou": obj.score, "point_coords": (obj.prompts or {}).get("points", [])}


def coco_document(store: AnnotationStore) -> dict:
    """All images and accepted objects as a COCO instances document (RLE segmentations, one category per label)."""
    annotated = _annotated(store)
    names = sorted({obj.label or UNLABELLED for _, objects in annotated for obj in objects}) or [UNLABELLED]
    category_ids = {name: index for index, name in enumerate(names, 1)}
    return coco_instances(
        [{"file_name": image.path, "width": image.width, "height": image.height} for image, _ in annotated],
        [[{**_record(obj), "category_id": category_ids[obj.label or UNLABELLED]} for obj in objects]
         for _, objects in annotated],
        [{"id": index, "name": name} for name, index in category_ids.items()],
    )


def coco_bytes(store: AnnotationStore) -> bytes:
    return json.dumps(coco_document(store)).encode()


def export_coco(store: AnnotationStore, path: str | os.PathLike) -> Path:
    write_coco_json(path, coco_document(store))
    return Path(path)


def export_sa1b(store: AnnotationStore, folder: str | os.PathLike) -> list[Path]:
    """One SA-1B style JSON per annotated image, at the image's relative path with a .json suffix."""
    written = []
    for image, objects in _annotated(store):
        if not objects:
            continue
        path = Path(folder) / Path(image.path).with_suffix(".json")
        write_sa1b_json(
            path,
            {"image_id": image.id, "file_name": image.path, "width": image.width, "height": image.height},
            [{**_record(obj), "id": obj.id, "crop_box": [0, 0, image.width, image.height]} for obj in objects],
        )
        written.append(path)
    return written


def _add(store: AnnotationStore, relative_path: str, entries: list[tuple[dict, str]], source: str,
         report: ImportReport) -> None:
    """Store (RLE, label) pairs on one image, skipping masks the image already has."""
    try:
        image = store.image_by_path(relative_path)
    except KeyError:
        report.unknown_images.append(relative_path)
        return
    known = {obj.rle["counts"] for obj in store.objects(image.id)}
    fresh = []
    for rle, label in entries:
        if rle["counts"] in known:
            report.duplicates += 1
            continue
        known.add(rle["counts"])
        fresh.append({"rle": rle, "label": label, "source": source})
    if fresh:
        try:
            store.add_objects(image.id, fresh)
        except ValueError as error:
            raise ValueError(f"{relative_path}: {error}") from None
        report.added += len(fresh)


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")


def import_coco(store: AnnotationStore, path: str | os.PathLike, source: str = "manual") -> ImportReport:
    """Add a COCO instances file's annotations to the images of the same file names."""
    _check_source(source)
    dataset = read_coco_json(path)
    categories = read_json(path).get("categories") or []
    try:
        names = {category["id"]: category["name"] for category in categories}
    except (KeyError, TypeError):
        raise ValueError(f"{path}: every category needs an 'id' and a 'name'") from None
    report = ImportReport()
    for info, records in dataset.values():
        if "file_name" not in info:
            raise ValueError(f"{path}: an image entry has no 'file_name': {info}")
        entries = [(record["segmentation"], names.get(record.get("category_id"), "")) for record in records]
        _add(store, info["file_name"], [(rle, "" if label == UNLABELLED else label) for rle, label in entries],
             source, report)
    return report


def import_sa1b(store: AnnotationStore, folder: str | os.PathLike, source: str = "prefilled") -> ImportReport:
    """Add the masks of SA-1B style per-image JSON files found (recursively) under ``folder``."""
    _check_source(source)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"SA-1B folder not found: {folder}")
    report = ImportReport()
    for path in sorted(folder.rglob("*.json")):
        info, records = read_sa1b_json(path)
        if "file_name" not in info:
            raise ValueError(f"{path}: the image entry has no 'file_name'")
        _add(store, info["file_name"], [(r["segmentation"], r.get("label", "")) for r in records], source, report)
    return report
