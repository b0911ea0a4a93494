"""The contract between the ONNX files segany writes and the runtime that reads them.

Kept free of torch so that :mod:`segany.export.onnx_predictor` can import it on machines
that only have onnxruntime.
"""

from __future__ import annotations

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"

# Encoder: a resized RGB image, float 0-255, 1 x 3 x h x w with max(h, w) == image size.
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)

# Decoder: the official decoder export's interface. Points are in the resized frame;
# labels are 1 foreground, 0 background, 2 / 3 a box's top-left / bottom-right corner,
# -1 padding. ``orig_im_size`` is (height, width) as floats.
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")

PAD_LABEL = -1
BOX_CORNER_LABELS = (2, 3)

# Model metadata stored in both graphs (onnx metadata_props), read back by OnnxPredictor.
META_IMAGE_SIZE = "segany.image_size"
META_EMBEDDING_SHAPE = "segany.embedding_shape"  # "C,h,w"
META_MASK_THRESHOLD = "segany.mask_threshold"
