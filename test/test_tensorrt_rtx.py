"""A real TensorRT in CI: TensorRT for RTX (`tensorrt_rtx_bindings`) parses and builds engines on
a machine without a GPU (only deserializing needs one). Every shipped model and a fresh export
are parsed; the parsed network's I/O is checked against the pipeline contract; the FP32-pinning
set is computed on the real network; engines are built through engine_builder.build_engine.

Run alone with `pytest -m tensorrt_rtx`. TensorRT for RTX has the API of TensorRT 10 without
weak typing (no BuilderFlag.FP16, no calibrators), so it also stands in for TensorRT 11."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panoptic_ros.classes import SYNTHETIC
from panoptic_ros.fusion.pipeline import build_pipeline
from panoptic_ros.runtime.backends.model_info import contract_specs, read_onnx_info
from panoptic_ros.runtime.engine_builder import build_engine, layers_to_keep_fp32, parse, tensorrt_layer_facts
from panoptic_ros.runtime.engine_cache import CacheEntry, EngineKey, file_sha256
from panoptic_ros.runtime.export import export_onnx

pytestmark = pytest.mark.tensorrt_rtx
trt = pytest.importorskip("tensorrt_rtx_bindings")

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
SHIPPED = sorted(MODELS_DIR.glob("*.onnx"))
GPU = ("no GPU (CI)", "0.0")  # the engine's target facts; building needs no device


@pytest.fixture(scope="module")
def fresh_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    pipeline = build_pipeline("psn", SYNTHETIC, 128, 256, width_mult=0.25, max_instances=20)
    return export_onnx(pipeline, tmp_path_factory.mktemp("rtx") / "psn_fresh.onnx")


def models(fresh: Path) -> list[Path]:
    return [*SHIPPED, fresh]


def test_all_five_models_are_shipped():
    assert [p.stem for p in SHIPPED] == ["fpsnet", "lpsnet", "psn", "rtps", "spinet"]


@pytest.mark.parametrize("index", range(len(SHIPPED) + 1), ids=[p.stem for p in SHIPPED] + ["fresh-export"])
def test_parsed_network_follows_the_pipeline_contract(index, fresh_export):
    from panoptic_ros.runtime.backends.trt_api import network_io

    onnx_path = models(fresh_export)[index]
    info = read_onnx_info(onnx_path)
    parsed = parse(onnx_path, trt, strongly_typed=True, explain=list)
    inputs, outputs = network_io(parsed.network, trt)
    height, width = info.input_hw
    assert (inputs, outputs) == contract_specs(height, width, info.table_rows)

    # FP32 pinning (the weak-typing path of TensorRT 8.x/10.x), computed on the real network.
    network = parsed.network
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    kept = set(layers_to_keep_fp32(tensorrt_layer_facts(network, trt)))
    by_type = {}
    for layer in layers:
        by_type.setdefault(layer.type, []).append(layer.name)
    learned = set(by_type[trt.LayerType.CONVOLUTION]) | set(by_type.get(trt.LayerType.DECONVOLUTION, []))
    assert kept and not kept & learned
    # TopK and ArgMax/ArgMin (TopK layers) over float values stay FP32 (an integer TopK has no precision)
    float_selections = {layer.name for layer in layers if layer.type == trt.LayerType.TOPK
                        and layer.get_output(0).dtype in (trt.float32, trt.float16)}
    assert float_selections and float_selections <= kept
    assert set(by_type.get(trt.LayerType.REDUCE, [])) & kept  # pixel counts
    # The network's first convolutions and what feeds them (normalisation) run in reduced precision.
    first_conv = next(layer for layer in layers if layer.type == trt.LayerType.CONVOLUTION)
    assert first_conv.name not in kept
    assert not {layer.name for layer in layers if layer.type == trt.LayerType.CONSTANT} & kept


def test_build_engine_builds_a_shipped_model_and_the_fresh_export(fresh_export, tmp_path):
    for onnx_path in (MODELS_DIR / "psn.onnx", fresh_export):
        engine = tmp_path / f"{onnx_path.stem}.engine"
        timing = tmp_path / "timing.cache"
        sidecar = build_engine(onnx_path, engine, "fp32", timing_cache=timing, trt=trt, gpu=GPU)
        key = EngineKey(file_sha256(onnx_path), "tensorrt_rtx_bindings", trt.__version__, *GPU, "fp32")
        assert sidecar.key == key
        assert CacheEntry.read(engine).problems(key, read_onnx_info(onnx_path)) == []
        assert sidecar.build["strongly_typed"]  # RTX has no weak typing: the FP32 file's types are the engine's
        assert sidecar.build["engine_io_checked"] is torch.cuda.is_available()
        assert engine.stat().st_size > 100_000 and timing.stat().st_mode & 0o777 == 0o644


def test_fp16_without_a_mixed_precision_onnx_is_a_clear_error(tmp_path):
    """The TensorRT 11 path: no BuilderFlag.FP16, so an FP32 file cannot become an FP16 engine."""
    with pytest.raises(ValueError, match="has no weak typing .* export ... --precision fp16"):
        build_engine(MODELS_DIR / "psn.onnx", tmp_path / "psn.engine", "fp16", trt=trt, gpu=GPU)
    assert not (tmp_path / "psn.engine").exists()


def test_parser_errors_name_the_file_and_the_parser(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((MODELS_DIR / "psn.onnx").read_bytes()[:5000])
    with pytest.raises(ValueError, match="tensorrt_rtx_bindings .* ONNX parser rejected .*broken.onnx"):
        parse(broken, trt, strongly_typed=True, explain=lambda: ["a likely cause"])
