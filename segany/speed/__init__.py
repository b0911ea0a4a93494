"""Speed: the encoder's fast modes and batched image encoding (see ``docs/speed.md``)."""

from segany.speed.modes import MODES, accelerate, embed_images

__all__ = ["MODES", "accelerate", "embed_images"]
