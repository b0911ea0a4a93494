"""When values made from a model's weights must be made again.

Several speed-ups keep values made from weights between calls: oneDNN's packed copies of the
decoder's layers, the upscaling's matrices, a predictor's image side. They must follow the
weights as PyTorch's own modules do: a new tensor put in a weight's place (a replaced
Parameter, ``.to()``) has other storage, and an in-place change (``load_state_dict``, an
optimizer step) bumps the tensor's version.
"""

from __future__ import annotations

import torch


def weights_state(*tensors: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Each tensor's storage address and version: equal states, same values. Inference tensors
    keep no version (PyTorch changes them in place only within inference mode), so for them
    only a new tensor is seen."""
    return tuple((tensor.data_ptr(), -1 if tensor.is_inference() else tensor._version) for tensor in tensors)
