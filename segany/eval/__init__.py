"""The paper's zero-shot evaluations, one module per protocol.

- :mod:`.points`: masks from a single centre point (most-confident and oracle), from the
  object's box, and the clicks curve with NoC@85/90;
- :mod:`.edges`: edge detection on BSDS500-style boundaries (ODS, OIS, AP);
- :mod:`.proposals`: automatic masks scored as object proposals (AR@100, AR@1000);
- :mod:`.boxes`: instance masks from ground-truth or detector boxes (COCO mask AP).

The model under test is anything that implements :class:`.segmenters.Segmenter` (SAM
checkpoints, the OpenCV GrabCut baseline, or the perfect and empty predictors of the tests),
so every protocol compares models on the same footing.
"""
