"""The Segment Anything network: image encoder, prompt encoder, mask decoder."""

from segany.modeling.freed_memory import keep_freed_memory
from segany.modeling.image_encoder import ImageEncoderViT
from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.sam import Sam
from segany.modeling.subnormals import flush_subnormals
from segany.modeling.transformer import TwoWayTransformer

flush_subnormals()  # on import, before any parallel operation, so that PyTorch's worker threads inherit it
keep_freed_memory()  # prompts reuse the pages of the previous prompt's temporaries

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TwoWayTransformer"]
