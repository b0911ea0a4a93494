"""Generator flags that keep the automatic-generation tests fast."""

# Small grid, thresholds off: a few masks per image in well under a second with the tiny model.
FAST_FLAGS = [
    "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "0.9",
]
