"""The annotation store: one SQLite file (WAL) holding the images, their objects and progress.

Every write is one short transaction, so two people annotating at once never lose a write
and a server killed mid-session keeps everything accepted before. Objects keep what the
paper's data engine tracked: the mask (COCO RLE), a label, where it came from (``manual``
clicks or ``prefilled`` by the automatic generator) and the seconds spent on it.

Image paths are stored relative to the images folder, so the folder can move; the folder
last served is recorded in the ``meta`` table so that :func:`training_records` can open the
database as a training set on its own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from segany.masks import decode_rle, encode_rle

SCHEMA_VERSION = 1
SOURCES = ("manual", "prefilled")
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,            -- POSIX path relative to the images folder
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,      -- the person marked the image finished
    prefilled INTEGER NOT NULL DEFAULT 0, -- the automatic generator has run on it
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    rle TEXT NOT NULL,                    -- COCO RLE as JSON: {"size": [h, w], "counts": "..."}
    area INTEGER NOT NULL,
    bbox TEXT NOT NULL,                   -- JSON [x, y, w, h], COCO convention
    label TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL CHECK (source IN ('manual', 'prefilled')),
    seconds REAL NOT NULL DEFAULT 0,      -- time the person spent on this mask
    score REAL,                           -- the model's predicted IoU when it was made
    prompts TEXT,                         -- JSON {points, labels, box, text} that produced it
    version INTEGER NOT NULL DEFAULT 1,   -- bumped on every edit, for conflict detection
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_image ON objects(image_id);
"""


class ConflictError(ValueError):
    """An edit based on an out-of-date version of an object (someone else changed it first)."""


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    width: int
    height: int
    done: bool
    prefilled: bool
    objects: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ObjectRecord:
    id: int
    image_id: int
    rle: dict
    area: int
    bbox: list[float]
    label: str
    source: str
    seconds: float
    score: float | None
    prompts: dict | None
    version: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as :func:`segany.io.read_image` returns it, read from the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: not a supported image or the file is corrupt ({error})") from None
    if orientation in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return height, width


def check_rle(rle: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO RLE dict meant for an image of ``height`` x ``width``; ValueError if it is not one.

    pycocotools decodes counts that stop short of the image without complaint (leaving the
    rest undefined), so a mask is accepted only if it re-encodes to exactly the counts given.
    """
    if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or "size" not in rle:
        raise ValueError('mask must be a COCO RLE object {"size": [h, w], "counts": "..."}')
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"mask size {list(rle['size'])} does not match the image size [{height}, {width}]")
    try:
        mask = decode_rle({"size": [height, width], "counts": rle["counts"]})
    except Exception as error:  # pycocotools reports malformed counts in several ways
        raise ValueError(f"mask RLE counts are malformed ({error})") from None
    if encode_rle(mask)["counts"] != rle["counts"]:
        raise ValueError("mask RLE counts are malformed: they do not describe exactly one mask of the image size")
    if not mask.any():
        raise ValueError("mask is empty: it must cover at least one pixel")
    return mask


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


class AnnotationStore:
    """The images of one folder and their accepted objects, in one SQLite database.

    Safe to share between threads and processes: each call opens its own short-lived
    connection and writes inside one ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(self, db_path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> None:
        self.db_path = Path(db_path)
        if self.db_path.is_dir():
            raise IsADirectoryError(f"--db must be a database file, got a folder: {self.db_path}")
        if images_dir is None and not self.db_path.exists():
            raise FileNotFoundError(f"annotation database not found: {self.db_path}")
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._reading() as db:  # autocommit: the schema statements are idempotent
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(f"{self.db_path} was written by a newer segany (schema {version} > {SCHEMA_VERSION})")
            db.executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
        if images_dir is not None:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('images_dir', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(Path(images_dir).resolve()),),
                )
        self.images_dir = Path(self._meta("images_dir") or ".")

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.db_path} is not a segany annotation database ({error})") from None
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: taken with the write lock at once, committed whole or not at all."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    def _meta(self, key: str) -> str | None:
        with self._reading() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    # -- images ------------------------------------------------------------------------

    def add_images(self, paths: list[Path]) -> list[str]:
        """Register image files under the images folder (already known ones are kept as they are).

        Returns the files that could not be registered (outside the folder or unreadable),
        as ``"path: reason"`` lines.
        """
        from tqdm import tqdm

        root = self.images_dir.resolve()
        with self._reading() as db:
            known = {row["path"] for row in db.execute("SELECT path FROM images")}
        rows, problems = [], []
        for path in tqdm(paths, desc="registering images", unit="image", disable=len(paths) < 500):
            resolved = Path(path).resolve()
            if not resolved.is_relative_to(root):
                problems.append(f"{path}: outside the images folder {root}")
                continue
            relative = resolved.relative_to(root).as_posix()
            if relative in known:
                continue
            try:
                height, width = image_size(resolved)
            except ValueError as error:
                problems.append(str(error))
                continue
            rows.append((relative, width, height, time.time()))
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO images(path, width, height, added_at) VALUES (?, ?, ?, ?)", rows
            )
        return problems

    def images(self) -> list[ImageRecord]:
        """Every image in path order, with its object count."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT images.*, COUNT(objects.id) AS objects FROM images "
                "LEFT JOIN objects ON objects.image_id = images.id GROUP BY images.id ORDER BY images.path"
            ).fetchall()
        return [_image_record(row) for row in rows]

    def image(self, image_id: int) -> ImageRecord:
        with self._reading() as db:
            row = db.execute(
                "SELECT images.*, (SELECT COUNT(*) FROM objects WHERE image_id = images.id) AS objects "
                "FROM images WHERE id = ?",
                (image_id,),
            ).fetchone()
        if row is None:
            raise KeyError(f"no image with id {image_id}")
        return _image_record(row)

    def image_by_path(self, relative_path: str) -> ImageRecord:
        with self._reading() as db:
            row = db.execute("SELECT id FROM images WHERE path = ?", (relative_path,)).fetchone()
        if row is None:
            raise KeyError(f"no image {relative_path!r} in {self.db_path}")
        return self.image(row["id"])

    def image_path(self, image: ImageRecord) -> Path:
        return self.images_dir / image.path

    def set_done(self, image_id: int, done: bool) -> ImageRecord:
        with self._transaction() as db:
            if db.execute("UPDATE images SET done = ? WHERE id = ?", (int(done), image_id)).rowcount == 0:
                raise KeyError(f"no image with id {image_id}")
        return self.image(image_id)

    # -- objects -----------------------------------------------------------------------

    def objects(self, image_id: int) -> list[ObjectRecord]:
        self.image(image_id)
        with self._reading() as db:
            rows = db.execute("SELECT * FROM objects WHERE image_id = ? ORDER BY id", (image_id,)).fetchall()
        return [_object_record(row) for row in rows]

    def object(self, object_id: int) -> ObjectRecord:
        with self._reading() as db:
            row = db.execute("SELECT * FROM objects WHERE id = ?", (object_id,)).fetchone()
        if row is None:
            raise KeyError(f"no object with id {object_id}")
        return _object_record(row)

    def add_object(
        self,
        image_id: int,
        rle: dict,
        *,
        label: str = "",
        source: str = "manual",
        seconds: float = 0.0,
        score: float | None = None,
        prompts: dict | None = None,
    ) -> ObjectRecord:
        """Store one accepted mask of an image; the mask is checked against the image size."""
        return self.add_objects(image_id, [dict(rle=rle, label=label, source=source, seconds=seconds,
                                                score=score, prompts=prompts)])[0]

    def add_objects(self, image_id: int, objects: list[dict], *, mark_prefilled: bool = False) -> list[ObjectRecord]:
        """Store several masks of one image in a single transaction (all or none)."""
        image = self.image(image_id)
        rows = [self._object_row(image, **fields) for fields in objects]
        now = time.time()
        with self._transaction() as db:
            ids = [
                db.execute(
                    "INSERT INTO objects(image_id, rle, area, bbox, label, source, seconds, score, prompts, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (image_id, *row, now, now),
                ).lastrowid
                for row in rows
            ]
            if mark_prefilled:
                db.execute("UPDATE images SET prefilled = 1 WHERE id = ?", (image_id,))
        return [self.object(object_id) for object_id in ids]

    def update_object(
        self,
        object_id: int,
        version: int,
        *,
        rle: dict | None = None,
        label: str | None = None,
        seconds: float = 0.0,
        score: float | None = None,
        prompts: dict | None = None,
    ) -> ObjectRecord:
        """Change an object's mask and/or label; ``seconds`` is added to the time already spent.

        ``version`` is the version the editor started from: if someone changed the object
        since, nothing is written and :class:`ConflictError` says so.
        """
        current = self.object(object_id)
        image = self.image(current.image_id)
        changes: dict[str, Any] = {}  # column -> new value (column names are fixed here, never input)
        if rle is not None:
            new_rle, area, bbox, *_ = self._object_row(image, rle=rle)
            changes.update(rle=new_rle, area=area, bbox=bbox, score=score,
                           prompts=json.dumps(prompts) if prompts is not None else None)
        if label is not None:
            changes["label"] = _check_label(label)
        assignments = "".join(f"{column} = ?, " for column in changes)
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE objects SET {assignments}seconds = seconds + ?, version = version + 1, updated_at = ? "
                "WHERE id = ? AND version = ?",
                (*changes.values(), _check_seconds(seconds), time.time(), object_id, version),
            ).rowcount
        if not changed:
            if self._exists(object_id):
                raise ConflictError(
                    f"object {object_id} was changed by someone else (you edited version {version}, "
                    f"it is now at version {self.object(object_id).version}); reload and edit again"
                )
            raise KeyError(f"no object with id {object_id}")
        return self.object(object_id)

    def delete_object(self, object_id: int) -> None:
        with self._transaction() as db:
            if db.execute("DELETE FROM objects WHERE id = ?", (object_id,)).rowcount == 0:
                raise KeyError(f"no object with id {object_id}")

    def _exists(self, object_id: int) -> bool:
        with self._reading() as db:
            return db.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone() is not None

    def _object_row(self, image: ImageRecord, rle: dict, label: str = "", source: str = "manual",
                    seconds: float = 0.0, score: float | None = None, prompts: dict | None = None) -> tuple:
        mask = check_rle(rle, image.height, image.width)
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        canonical = encode_rle(mask)
        return (json.dumps(canonical), int(mask.sum()), json.dumps(mask_bbox(mask)), _check_label(label), source,
                _check_seconds(seconds), score, json.dumps(prompts) if prompts is not None else None)

    # -- summaries ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for a progress line: images, done, prefilled, objects by source, seconds spent."""
        with self._reading() as db:
            images = db.execute("SELECT COUNT(*), SUM(done), SUM(prefilled) FROM images").fetchone()
            by_source = dict(db.execute("SELECT source, COUNT(*) FROM objects GROUP BY source").fetchall())
            seconds = db.execute("SELECT COALESCE(SUM(seconds), 0) FROM objects").fetchone()[0]
        return {
            "images": images[0],
            "done": images[1] or 0,
            "prefilled": images[2] or 0,
            "objects": sum(by_source.values()),
            "objects_by_source": {source: by_source.get(source, 0) for source in SOURCES},
            "seconds": float(seconds),
        }


def _check_label(label: str) -> str:
    if not isinstance(label, str) or len(label) > 200:
        raise ValueError("label must be a string of at most 200 characters")
    return label.strip()


def _check_seconds(seconds: float) -> float:
    if not isinstance(seconds, (int, float)) or not np.isfinite(seconds) or not 0 <= seconds <= 86400:
        raise ValueError(f"seconds must be a number between 0 and 86400, got {seconds!r}")
    return float(seconds)


def _image_record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(row["id"], row["path"], row["width"], row["height"], bool(row["done"]),
                       bool(row["prefilled"]), row["objects"])


def _object_record(row: sqlite3.Row) -> ObjectRecord:
    return ObjectRecord(
        id=row["id"],
        image_id=row["image_id"],
        rle=json.loads(row["rle"]),
        area=row["area"],
        bbox=json.loads(row["bbox"]),
        label=row["label"],
        source=row["source"],
        seconds=row["seconds"],
        score=row["score"],
        prompts=json.loads(row["prompts"]) if row["prompts"] else None,
        version=row["version"],
    )


def training_records(db_path: str | os.PathLike) -> Iterator[tuple[Path, list[dict]]]:
    """(image path, COCO RLE dicts of its accepted objects) for every image that has some.

    Accepted means made by a person (``manual``), or ``prefilled`` on an image the person
    has reviewed and marked done: unreviewed machine masks are not training data. This is
    how a database becomes a training or evaluation set (``segany train --data annotations.sqlite``).
    """
    store = AnnotationStore(db_path)
    for image in store.images():
        rles = [record.rle for record in store.objects(image.id) if record.source == "manual" or image.done]
        if rles:
            yield store.image_path(image), rles
