"""Image reading: formats, EXIF orientation, modes, corrupt files; atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segany.io import atomic_write, list_images, read_image


@pytest.fixture
def rgb(rng) -> np.ndarray:
    return rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".webp"])
def test_lossless_formats_round_trip(tmp_path, rgb, suffix):
    path = tmp_path / f"image{suffix}"
    Image.fromarray(rgb).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    np.testing.assert_array_equal(read_image(path), rgb)


def test_jpeg_reads_as_rgb_uint8(tmp_path):
    smooth = np.zeros((12, 20, 3), dtype=np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 20, dtype=np.uint8)
    smooth[..., 2] = 200
    path = tmp_path / "image.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    image = read_image(path)
    assert image.shape == (12, 20, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - smooth).mean() < 5


def test_exif_orientation_is_applied(tmp_path, rgb):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    assert read_image(path).shape == (20, 12, 3)


def test_grayscale_rgba_palette(tmp_path, rgb):
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").shape == rgb.shape


def test_sixteen_bit_scales_to_eight(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(image[0, :, 0], [0, 100, 255])


def test_corrupt_and_missing_files(tmp_path, rgb):
    path = tmp_path / "broken.jpg"
    Image.fromarray(rgb).save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image(path)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_list_images_expands_folders(tmp_path, rgb):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.jpg", "sub/c.webp", "skip.txt"]:
        (tmp_path / name).write_bytes(b"x")
    names = [p.name for p in list_images([tmp_path])]
    assert names == ["a.jpg", "b.png", "c.webp"]
    with pytest.raises(FileNotFoundError):
        list_images([tmp_path / "absent"])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as stream:
            stream.write("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
