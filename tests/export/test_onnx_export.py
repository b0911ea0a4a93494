"""ONNX export: onnxruntime against PyTorch and against the official decoder export, the
torch-free OnnxPredictor, and the ``segany export onnx`` command.

Tolerances (float32 on CPU): image embedding and mask logits within 1e-4 absolute,
IoU predictions within 1e-5; thresholded masks may differ only where |logit| < 1e-3.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import segany
from oracle import PROMPTS, blocky_image, build_model_pair, official  # noqa: F401  (skips without the official package)
from segany.build import CONFIGS, save_sam
from segany.cli import main as cli_main
from segany.export import OnnxPredictor, interface

pytest.importorskip("onnxruntime")

LOGIT_TOLERANCE = 1e-4
IOU_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def models():
    return build_model_pair(seed=0, config=CONFIGS["tiny"])


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """The segany model exported by the CLI, as a user would (checkpoint -> folder)."""
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = save_sam(models[1], folder / "tiny.safetensors")
    assert cli_main(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(folder / "out")]) == 0
    return folder / "out"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return blocky_image()


@pytest.fixture(scope="module")
def predictors(models, exported, image):
    ours, runtime = segany.SamPredictor(models[1]), OnnxPredictor(exported)
    ours.set_image(image)
    runtime.set_image(image)
    return ours, runtime


def assert_close_outputs(expected, actual) -> None:
    (masks, ious, low_res), (onnx_masks, onnx_ious, onnx_low_res) = expected, actual
    assert onnx_masks.shape == masks.shape and onnx_ious.shape == ious.shape and onnx_low_res.shape == low_res.shape
    assert np.abs(onnx_masks - masks).max() <= LOGIT_TOLERANCE
    assert np.abs(onnx_low_res - low_res).max() <= LOGIT_TOLERANCE
    assert np.abs(onnx_ious - ious).max() <= IOU_TOLERANCE


def test_embedding_matches_pytorch(predictors):
    ours, runtime = predictors
    assert runtime.features.shape == tuple(ours.features.shape)
    assert np.abs(runtime.get_image_embedding() - ours.features.numpy()).max() <= LOGIT_TOLERANCE
    assert (runtime.original_size, runtime.input_size) == (ours.original_size, ours.input_size)


def test_portrait_image_embedding_matches_pytorch(models, exported, image):
    """The encoder graph pads inside: another aspect ratio than the traced one must work."""
    portrait = np.ascontiguousarray(image.transpose(1, 0, 2)[:, :150])
    ours, runtime = segany.SamPredictor(models[1]), OnnxPredictor(exported)
    ours.set_image(portrait)
    runtime.set_image(portrait)
    assert np.abs(runtime.features - ours.features.numpy()).max() <= LOGIT_TOLERANCE


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("multimask_output", [True, False])
def test_predict_matches_pytorch(predictors, prompt, multimask_output):
    ours, runtime = predictors
    kwargs = dict(PROMPTS[prompt], multimask_output=multimask_output)
    assert_close_outputs(ours.predict(**kwargs, return_logits=True), runtime.predict(**kwargs, return_logits=True))
    logits = ours.predict(**kwargs, return_logits=True)[0]
    masks, _, _ = runtime.predict(**kwargs)
    assert masks.dtype == bool
    disagree = masks != (logits > 0)
    assert np.all(np.abs(logits[disagree]) < 1e-3)


@pytest.mark.parametrize("with_points", [False, True])
def test_mask_input_matches_pytorch(predictors, with_points):
    ours, runtime = predictors
    _, scores, low_res = ours.predict(**PROMPTS["one point"])
    kwargs = dict(mask_input=low_res[np.argmax(scores)][None], multimask_output=False, return_logits=True)
    if with_points:
        kwargs.update(point_coords=np.array([[60.0, 120.0]]), point_labels=np.array([0]))
    assert_close_outputs(ours.predict(**kwargs), runtime.predict(**kwargs))


def test_decoder_matches_official_export(models, exported, tmp_path):
    """The official exporter's decoder (same weights) and ours: same interface, same outputs.

    The official graph is compared on its traced input only: its tracing bakes the crop size
    of ``orig_im_size`` into the graph, so for other sizes the official *eager* module is the
    reference (ours records that arithmetic in the graph and follows the input).
    """
    import onnxruntime
    from segment_anything.utils.onnx import SamOnnxModel

    from segany.export.onnx_export import example_decoder_inputs

    reference = SamOnnxModel(models[0], return_single_mask=False)
    traced_inputs = example_decoder_inputs(models[1], num_points=5)
    official_path = tmp_path / "official.onnx"
    torch.onnx.export(
        reference, tuple(traced_inputs.values()), str(official_path),
        input_names=list(traced_inputs), output_names=list(interface.DECODER_OUTPUTS),
        dynamic_axes={"point_coords": {1: "n"}, "point_labels": {1: "n"}}, opset_version=17, dynamo=False,
    )
    official_session, our_session = (onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                                     for path in (official_path, exported / interface.DECODER_FILE))
    assert [i.name for i in our_session.get_inputs()] == [i.name for i in official_session.get_inputs()]
    assert [o.name for o in our_session.get_outputs()] == list(interface.DECODER_OUTPUTS)
    feed = {name: tensor.numpy() for name, tensor in traced_inputs.items()}
    for want, got in zip(official_session.run(None, feed), our_session.run(None, feed)):
        assert got.shape == want.shape and np.abs(got - want).max() <= LOGIT_TOLERANCE

    for num_points, orig_size, has_mask in ((2, (180.0, 300.0), 0.0), (4, (400.0, 250.0), 1.0)):
        inputs = example_decoder_inputs(models[1], num_points)
        inputs["orig_im_size"] = torch.tensor(orig_size)
        inputs["has_mask_input"] = torch.tensor([has_mask])
        with torch.no_grad():
            expected = reference(**inputs)
        actual = our_session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
        assert actual[0].shape[-2:] == tuple(int(v) for v in orig_size)
        for want, got in zip(expected, actual):
            assert got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() <= LOGIT_TOLERANCE


def test_compare_with_torch_reports_small_differences(models, exported):
    from segany.export.onnx_export import compare_with_torch

    differences = compare_with_torch(models[1], exported)
    assert set(differences) == {"image_embeddings", *interface.DECODER_OUTPUTS}
    assert max(differences.values()) <= LOGIT_TOLERANCE


def test_onnx_predictor_rejects_bad_input(predictors, exported, tmp_path):
    _, runtime = predictors
    with pytest.raises(FileNotFoundError, match="segany export onnx"):
        OnnxPredictor(tmp_path)
    with pytest.raises(ValueError, match="point_labels must be 1"):
        runtime.predict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([2]))
    with pytest.raises(ValueError, match="outside the 291x187"):
        runtime.predict(point_coords=np.array([[500.0, 10.0]]), point_labels=np.array([1]))
    with pytest.raises(ValueError, match="XYXY"):
        runtime.predict(box=np.array([100.0, 10.0, 50.0, 20.0]))
    with pytest.raises(ValueError, match="mask_input must have shape"):
        runtime.predict(mask_input=np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="no prompt"):
        runtime.predict()
    with pytest.raises(ValueError, match="set_image"):
        OnnxPredictor(exported).predict(**PROMPTS["one point"])


def test_cli_export_rejects_missing_checkpoint(tmp_path, capsys):
    code = cli_main(["export", "onnx", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "nope.pth" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out" / interface.ENCODER_FILE).exists()


def test_onnx_predictor_runs_without_torch(exported, image, tmp_path):
    """Import and use OnnxPredictor in a process where ``import torch`` fails, as on a torch-free machine."""
    np.save(tmp_path / "image.npy", image)
    script = textwrap.dedent(
        f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed here")
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from segany.export import OnnxPredictor
        predictor = OnnxPredictor({str(exported)!r})
        predictor.set_image(np.load({str(tmp_path / "image.npy")!r}))
        masks, scores, low_res = predictor.predict(np.array([[120.0, 80.0]]), np.array([1]))
        assert masks.shape == (3, 187, 291) and scores.shape == (3,), (masks.shape, scores.shape)
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
