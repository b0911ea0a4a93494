"""The text pathway learns: trained on crop embeddings only, a tiny model segments by text alone.

See ``named_shapes.py`` for the scenes, the stand-in CLIP and the shuffled-text control;
docs/text_prompts.md quotes the figures this measures.
"""

from __future__ import annotations

import torch

from named_shapes import run_experiment


def test_text_prompts_segment_the_named_object_far_better_than_shuffled_text(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figures in the docs were measured on one thread
    try:
        figures = run_experiment(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert figures["crops_recognised"] == 1.0  # the stand-in read every training crop correctly
    assert figures["cached_crops"] == figures["crops_embedded"] == 600  # each crop embedded once, then cached
    assert figures["miou_text"] > 0.5, figures
    assert figures["miou_shuffled_text"] < 0.25, figures
    assert figures["miou_text"] > 3 * figures["miou_shuffled_text"], figures
