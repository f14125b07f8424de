"""Backends: ONNX Runtime and PyTorch agree on every model; bad files and inputs fail clearly;
TensorRT and CUDA run where they exist and skip cleanly where not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.pipeline import MODEL_NAMES, build_pipeline
from panoptic_ros.networks.checkpoint import save_checkpoint
from panoptic_ros.pipeline_io import COL, META_MODEL, Thresholds, check_label_divisor
from panoptic_ros.runtime.backends import BACKENDS, create_backend, read_onnx_info
from panoptic_ros.runtime.backends.base import resolve_device
from panoptic_ros.runtime.backends.torch_backend import TorchBackend
from panoptic_ros.runtime.export import export_onnx
from panoptic_ros.runtime.golden import compare_results, golden_image

HEIGHT, WIDTH, K = 128, 256, 20


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every model as a tiny untrained pipeline: (ONNX file, checkpoint) per name, seeded."""
    out = tmp_path_factory.mktemp("backends")
    files = {}
    for name in MODEL_NAMES:
        torch.manual_seed(0)
        pipeline = build_pipeline(name, SYNTHETIC, HEIGHT, WIDTH, width_mult=0.25, max_instances=K)
        files[name] = (export_onnx(pipeline, out / f"{name}.onnx"), out / f"{name}.pt")
        save_checkpoint(files[name][1], pipeline.network, name)
    return files


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return golden_image(HEIGHT, WIDTH)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnxruntime_and_torch_agree(models, image, name):
    onnx_path, checkpoint = models[name]
    ort = create_backend("onnxruntime", onnx_path, device="cpu")
    eager = create_backend("torch", checkpoint, device="cpu", height=HEIGHT, width=WIDTH, max_instances=K)
    thresholds = Thresholds(score_threshold=0.05, center_threshold=0.05)
    a, b = ort.run(image, thresholds, 1000), eager.run(image, thresholds, 1000)
    agreement = compare_results(a, b)
    assert agreement.id_agreement >= 0.999 and agreement.semantic_agreement >= 0.999, agreement.report()
    assert a.num_instances == b.num_instances
    assert agreement.matched == a.num_instances
    np.testing.assert_allclose(a.instances, b.instances, atol=1e-2)
    for result in (a, b):
        assert result.panoptic.dtype == np.int32 and result.semantic.dtype == np.uint8
        assert result.instances.shape == (K + len(SYNTHETIC.stuff_ids), 11)


def test_backends_describe_the_same_model(models):
    onnx_path, checkpoint = models["psn"]
    ort = create_backend("onnxruntime", onnx_path, device="cpu").describe()
    eager = create_backend("torch", checkpoint, device="cpu", height=HEIGHT, width=WIDTH, max_instances=K).describe()
    for key in ("model_name", "label_set", "max_instances", "input_hw", "inputs", "outputs"):
        assert ort[key] == eager[key], key
    assert (ort["backend"], ort["device"], ort["precision"]) == ("onnxruntime", "cpu", "fp32")
    assert ort["input_hw"] == [HEIGHT, WIDTH] and ort["max_instances"] == K
    assert ort["inputs"][0] == {"name": "image", "shape": [HEIGHT, WIDTH, 3], "dtype": "uint8"}
    assert ort["providers"] == ["CPUExecutionProvider"]


def test_changed_thresholds_reach_the_graph(models, image):
    """Scalar inputs are cached between frames; a change must still reach the graph."""
    backend = create_backend("onnxruntime", models["fpsnet"][0], device="cpu")  # has things on this image
    low = Thresholds(score_threshold=0.0, center_threshold=0.0)
    first = backend.run(image, low, 1000)
    assert _things(first) > 0
    assert _things(backend.run(image, Thresholds(center_threshold=1.0, score_threshold=1.0), 1000)) == 0
    again = backend.run(image, low, 1000)
    np.testing.assert_array_equal(again.panoptic, first.panoptic)
    bigger = backend.run(image, low, 5000)  # the divisor too
    things = first.panoptic >= 1000
    np.testing.assert_array_equal(bigger.panoptic[things] % 5000, first.panoptic[things] % 1000)


def _things(result) -> int:
    return int(np.isin(result.valid_instances[:, COL["class_id"]], SYNTHETIC.thing_ids).sum())


def test_torch_backend_from_pipeline_matches_checkpoint(models, image):
    torch.manual_seed(0)
    pipeline = build_pipeline("psn", SYNTHETIC, HEIGHT, WIDTH, width_mult=0.25, max_instances=K)
    in_memory = TorchBackend.from_pipeline(pipeline, device="cpu").run(image, Thresholds(), 1000)
    loaded = create_backend("torch", models["psn"][1], device="cpu", height=HEIGHT, width=WIDTH, max_instances=K)
    np.testing.assert_array_equal(in_memory.panoptic, loaded.run(image, Thresholds(), 1000).panoptic)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((HEIGHT, WIDTH, 3), np.float32), "uint8"),
    (np.zeros((HEIGHT, WIDTH), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((HEIGHT, WIDTH, 4), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((HEIGHT + 1, WIDTH, 3), np.uint8), "resize it"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_images_are_refused_by_every_backend(models, bad, message):
    onnx_path, checkpoint = models["psn"]
    for backend in (create_backend("onnxruntime", onnx_path, device="cpu"),
                    create_backend("torch", checkpoint, device="cpu", height=HEIGHT, width=WIDTH, max_instances=K)):
        with pytest.raises(ValueError, match=message):
            backend.run(bad, Thresholds(), 1000)


def test_label_divisor_is_checked():
    check_label_divisor(1000, max_instances=100, num_classes=19)
    with pytest.raises(ValueError, match="greater than max_instances"):
        check_label_divisor(100, max_instances=100, num_classes=19)
    with pytest.raises(ValueError, match="overflow int32"):
        check_label_divisor(200_000_000, max_instances=100, num_classes=19)
    with pytest.raises(ValueError, match="integer"):
        check_label_divisor(1000.0, max_instances=100, num_classes=19)


def test_unknown_backend_lists_the_valid_ones(models):
    with pytest.raises(ValueError, match="onnxruntime, torch, tensorrt"):
        create_backend("openvino", models["psn"][0])
    assert BACKENDS == ("onnxruntime", "torch", "tensorrt")


def test_missing_and_wrong_files_are_named(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.onnx"):
        create_backend("onnxruntime", tmp_path / "nothere.onnx")
    with pytest.raises(FileNotFoundError, match="psn-fp16.engine"):
        create_backend("tensorrt", tmp_path / "psn-fp16.engine")
    with pytest.raises(ValueError, match=r"loads \.onnx files, got .*psn\.pt"):
        create_backend("onnxruntime", models["psn"][1])
    with pytest.raises(ValueError, match="give height= and width="):
        create_backend("torch", models["psn"][1], device="cpu")
    with pytest.raises(ValueError, match=r"loads \.pt or \.pth files"):
        create_backend("torch", models["psn"][0])


def test_corrupt_onnx_is_named(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    with pytest.raises(ValueError, match="corrupt.onnx is not a readable ONNX model"):
        create_backend("onnxruntime", corrupt)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.onnx is not a readable ONNX model"):
        create_backend("onnxruntime", empty)


def test_onnx_without_metadata_or_with_other_io_is_refused(models, tmp_path):
    model = onnx.load(str(models["psn"][0]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ValueError, match=f"bare.onnx: missing panoptic_ros metadata.*{META_MODEL}"):
        read_onnx_info(bare)
    model = onnx.load(str(models["psn"][0]))
    model.graph.output[1].name = "classes"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(model, str(renamed))
    with pytest.raises(ValueError, match="renamed.onnx: does not match the pipeline contract"):
        read_onnx_info(renamed)


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        create_backend("torch", bad, device="cpu", height=HEIGHT, width=WIDTH)


def test_device_resolution():
    assert resolve_device("auto", cuda_available=False) == "cpu"
    assert resolve_device("auto", cuda_available=True) == "cuda:0"
    assert resolve_device("cuda", cuda_available=True) == "cuda:0"
    assert resolve_device("cuda:1", cuda_available=True) == "cuda:1"
    assert resolve_device("cpu", cuda_available=True) == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N"):
        resolve_device("gpu", cuda_available=True)


def test_unknown_precision_is_refused_before_loading_anything(models):
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid: fp32, fp16, int8"):
        create_backend("tensorrt", models["psn"][0], precision="fp8")


def test_tensorrt_without_tensorrt_says_where_it_comes_from(models):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="JetPack"):
            create_backend("tensorrt", models["psn"][0], tensorrt_module="tensorrt")
    else:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(ValueError, match="unknown TensorRT module 'tensorrt_lite'; valid: tensorrt, "
                                         "tensorrt_rtx_bindings"):
        create_backend("tensorrt", models["psn"][0], tensorrt_module="tensorrt_lite")


@pytest.mark.tensorrt_rtx
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_tensorrt_backend_needs_a_cuda_device(models):
    pytest.importorskip("tensorrt_rtx_bindings")
    with pytest.raises(ValueError, match="runs on a CUDA device"):
        create_backend("tensorrt", models["psn"][0], tensorrt_module="tensorrt_rtx_bindings")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
def test_torch_cuda_matches_cpu(models, image):
    onnx_path, checkpoint = models["psn"]
    options = {"height": HEIGHT, "width": WIDTH, "max_instances": K}
    cpu = create_backend("torch", checkpoint, device="cpu", **options).run(image, Thresholds(), 1000)
    cuda_backend = create_backend("torch", checkpoint, device="cuda", **options)
    cuda = cuda_backend.run(image, Thresholds(), 1000)
    assert compare_results(cpu, cuda).id_agreement >= 0.999
    assert cuda_backend.device_outputs["panoptic"].is_cuda


@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_onnxruntime(models, image, tmp_path, precision):
    pytest.importorskip("tensorrt")
    onnx_path = models["psn"][0]
    expected = create_backend("onnxruntime", onnx_path, device="cpu").run(image, Thresholds(), 1000)
    backend = create_backend("tensorrt", onnx_path, precision=precision, cache_dir=tmp_path)
    agreement = compare_results(expected, backend.run(image, Thresholds(), 1000))
    assert agreement.semantic_agreement >= 0.99 and agreement.id_agreement >= 0.99, agreement.report()
    assert backend.describe()["engine_path"].startswith(str(tmp_path))
    # A second start finds the cached engine (same file, no rebuild) and refuses nothing.
    again = create_backend("tensorrt", onnx_path, precision=precision, cache_dir=tmp_path, allow_build=False)
    assert again.engine_path == backend.engine_path


def test_tensorrt_facts_without_tensorrt():
    from panoptic_ros.runtime.backends.trt_api import compute_capability, numpy_dtype

    assert [numpy_dtype(n) for n in ("FLOAT", "HALF", "INT32", "UINT8", "BOOL")] == \
        ["float32", "float16", "int32", "uint8", "bool"]
    with pytest.raises(ValueError, match="FP8"):
        numpy_dtype("FP8")
    assert compute_capability(8, 7) == "8.7"


def _fake_tensorrt(version: str, creation_flags: dict, builder_flags: tuple, calibrators: bool):
    """A module with the API surface the feature tests look at (nothing else)."""
    from enum import IntEnum
    from types import SimpleNamespace

    module = SimpleNamespace(__name__="tensorrt", __version__=version,
                             NetworkDefinitionCreationFlag=IntEnum("Creation", creation_flags),
                             BuilderFlag=SimpleNamespace(**{name: name for name in builder_flags}))
    if calibrators:
        module.IInt8EntropyCalibrator2 = object
    return module


# What each TensorRT offers (from its Python API): 8.6 weak typing only; 10.x both; 11 and RTX strong only.
TRT_8_6 = ("8.6.2.3", {"EXPLICIT_BATCH": 0}, ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"), True)
TRT_10_3 = ("10.3.0.30", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 5}, ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"),
            True)
TRT_11 = ("11.0.0", {"STRONGLY_TYPED": 5}, ("REFIT",), False)


@pytest.mark.parametrize("facts, weak, strong, int8, flags_weak, flags_strong", [
    (TRT_8_6, True, False, True, 1, None),
    (TRT_10_3, True, True, True, 1, 1 << 5),
    (TRT_11, False, True, False, 0, 1 << 5),
    # A version string alone decides nothing: an "8.x" module with 11's API is treated as 11.
    (("8.9.9", *TRT_11[1:]), False, True, False, 0, 1 << 5),
])
def test_tensorrt_api_paths_come_from_feature_tests(facts, weak, strong, int8, flags_weak, flags_strong):
    from panoptic_ros.runtime.backends.trt_api import (
        has_int8_calibrators,
        has_strong_typing,
        has_weak_typing,
        network_flags,
    )

    trt = _fake_tensorrt(*facts)
    assert (has_weak_typing(trt), has_strong_typing(trt), has_int8_calibrators(trt)) == (weak, strong, int8)
    assert network_flags(trt, strongly_typed=False) == flags_weak
    if flags_strong is not None:
        assert network_flags(trt, strongly_typed=True) == flags_strong
