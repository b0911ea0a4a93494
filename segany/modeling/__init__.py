"""The Segment Anything network: image encoder, prompt encoder, mask decoder."""

from segany.modeling.image_encoder import ImageEncoderViT
from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.sam import Sam
from segany.modeling.transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TwoWayTransformer"]
