"""The semi-automatic stage: prefill an image with the automatic generator's confident masks.

As in the paper's data engine, the person then reviews the image: keeps the prefilled
objects, deletes the wrong ones, and adds what is missing by clicking. Masks that mostly
cover objects already on the image are not added again, so prefilling twice, or after some
manual work, does not duplicate objects.
"""

from __future__ import annotations

from pathlib import Path

from pycocotools import mask as coco_mask

from segany.engine.model import ModelService
from segany.engine.store import AnnotationStore, ImageRecord, ObjectRecord

# The generator's own confidence filters (the official 0.88 / 0.95, or those saved with the
# weights: the embedded model's IoU head runs on a lower scale), without specks and holes.
PREFILL_OPTIONS = {"min_mask_region_area": 100}
MAX_COVERED_FRACTION = 0.5  # a candidate whose area is more than this much annotated already is dropped


def _pycocotools_rle(rle: dict) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}


def new_ground(candidates: list[dict], existing: list[dict]) -> list[int]:
    """Indices of the candidate RLEs (best first) not mostly covered by existing or earlier kept masks."""
    kept: list[int] = []
    taken = [_pycocotools_rle(rle) for rle in existing]
    for index, rle in enumerate(candidates):
        candidate = _pycocotools_rle(rle)
        if taken:
            # iscrowd=1 makes pycocotools divide the intersection by the candidate's own area
            covered = coco_mask.iou([candidate], taken, [1] * len(taken)).max()
            if covered > MAX_COVERED_FRACTION:
                continue
        kept.append(index)
        taken.append(candidate)
    return kept


def prefill_image(store: AnnotationStore, service: ModelService, image: ImageRecord, path: Path) -> list[ObjectRecord]:
    """Run the automatic generator on one image and store its new confident masks as ``prefilled``."""
    records = sorted(service.automatic_masks(path, **PREFILL_OPTIONS), key=lambda r: -r["predicted_iou"])
    existing = [record.rle for record in store.objects(image.id)]
    fresh = new_ground([record["segmentation"] for record in records], existing)
    objects = [{"rle": records[i]["segmentation"], "source": "prefilled", "score": records[i]["predicted_iou"]}
               for i in fresh]
    return store.add_objects(image.id, objects, mark_prefilled=True)
