"""Timing of a pipeline's two halves, network and fusion, for `panoptic-ros bench fusion`.

FPSNet runs a learned part, its panoptic head, inside the fusion (between detector and arg-max);
it is timed on its own as well (`head_ms`, part of `fusion_ms`), so that the post-processing
share can be reported without it.
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from panoptic_ros.classes import DEFAULT_LABEL_DIVISOR
from panoptic_ros.fusion.base import Heads, RuntimeThresholds
from panoptic_ros.fusion.pipeline import PanopticPipeline
from panoptic_ros.pipeline_io import HEAD_CENTER, HEAD_FEATURES, HEAD_OFFSET, HEAD_SEMANTIC, Thresholds

HeadsLayout = list[tuple[str, "int | None"]]  # (head name, list length or None for a single tensor)
Clock = Callable[[], float]  # seconds; injected by tests


def time_pipeline(pipeline: PanopticPipeline, runtime: str, warmup: int, iterations: int,
                  clock: Clock = time.perf_counter, threads: int = 0) -> dict[str, float]:
    """Median network_ms, fusion_ms and head_ms (learned layers inside the fusion, 0 for most models)
    of `pipeline` on a black frame; runtime: torch, cuda or onnxruntime; `clock` in seconds; `threads`:
    ONNX Runtime's intra-op threads (0: its default)."""
    inputs = pipeline.example_inputs()
    if runtime == "onnxruntime":
        return _time_onnxruntime(pipeline, inputs, warmup, iterations, clock, threads)
    device = torch.device("cuda" if runtime == "cuda" else "cpu")
    pipeline = pipeline.to(device)
    image, *scalars = (t.to(device) for t in inputs)
    thresholds, divisor = RuntimeThresholds(*scalars[:-1]), scalars[-1]
    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
    with torch.inference_mode():
        heads = pipeline.network(pipeline.normalize(image))
        times = {
            "network_ms": median_ms(lambda: pipeline.network(pipeline.normalize(image)), warmup, iterations, sync,
                                    clock),
            "fusion_ms": median_ms(lambda: pipeline.fusion(heads, thresholds, divisor), warmup,
                                   iterations, sync, clock),
            "head_ms": 0.0,
        }
        head = _panoptic_head_args(pipeline, heads)
        if head is not None:
            times["head_ms"] = median_ms(lambda: pipeline.network.panoptic_head(*head), warmup, iterations, sync,
                                         clock)
    pipeline.to("cpu")
    return times


def _panoptic_head_args(pipeline: PanopticPipeline, heads: Heads) -> tuple[Tensor, Tensor] | None:
    """(features, empty attention masks) when the network's panoptic head runs inside the fusion."""
    if not hasattr(pipeline.network, "panoptic_head"):
        return None
    features = heads[HEAD_FEATURES]
    masks = features.new_zeros(features.shape[0], pipeline.network.num_attention, *features.shape[-2:])
    return features, masks


def time_psn_versus_deeplab(height: int, width: int, frame: int, max_instances: int, warmup: int, iterations: int,
                            clock: Clock = time.perf_counter) -> dict[str, float]:
    """{"fusion_ms", "deeplab_ms", "instances"}: PSN's static fusion and the straightforward Panoptic-DeepLab
    post-processing (eager PyTorch, CPU) on the ideal heads of held-out synthetic frame `frame`."""
    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data.synthetic import generate_scene
    from panoptic_ros.fusion.deeplab_postprocess import panoptic_deeplab
    from panoptic_ros.fusion.ideal_heads import ideal_psn_heads
    from panoptic_ros.fusion.ideal_pq import HELD_OUT_SEED
    from panoptic_ros.fusion.psn import PSNFusion

    scene = generate_scene(HELD_OUT_SEED + frame, height, width)
    heads = {k: torch.from_numpy(v) for k, v in ideal_psn_heads(scene.semantic, scene.instance, SYNTHETIC).items()}
    defaults = Thresholds()
    fusion = PSNFusion(SYNTHETIC, max_instances)
    thresholds = RuntimeThresholds.from_thresholds(defaults)
    divisor = torch.tensor(DEFAULT_LABEL_DIVISOR, dtype=torch.int32)
    semantic, center, offset = heads[HEAD_SEMANTIC][0], heads[HEAD_CENTER][0, 0], heads[HEAD_OFFSET][0]

    def deeplab() -> Tensor:
        return panoptic_deeplab(semantic, center, offset, list(SYNTHETIC.thing_ids), DEFAULT_LABEL_DIVISOR,
                                int(defaults.min_stuff_area), defaults.center_threshold, fusion.nms_kernel,
                                max_instances)

    with torch.inference_mode():
        return {"fusion_ms": median_ms(lambda: fusion(heads, thresholds, divisor), warmup, iterations, clock=clock),
                "deeplab_ms": median_ms(deeplab, warmup, iterations, clock=clock),
                "instances": float(len(np.unique(scene.instance[scene.instance >= 0])))}


def median_ms(fn: Callable[[], object], warmup: int, iterations: int, sync: Callable[[], None] | None = None,
              clock: Clock = time.perf_counter) -> float:
    """Median wall time of fn() in milliseconds after `warmup` untimed calls (`clock` in seconds)."""
    sync = sync or _no_sync
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iterations):
        start = clock()
        fn()
        sync()
        times.append((clock() - start) * 1000.0)
    return statistics.median(times)


def _no_sync() -> None:
    pass


def _time_onnxruntime(pipeline: PanopticPipeline, inputs: tuple[Tensor, ...], warmup: int,
                      iterations: int, clock: Clock, threads: int) -> dict[str, float]:
    """Each half exported as its own graph (fusion takes the heads as inputs) and timed in ONNX Runtime."""
    with torch.no_grad():
        heads = pipeline.network(pipeline.normalize(inputs[0]))
    layout, flat = flatten_heads(heads)
    graphs = {"network_ms": (NetworkGraph(pipeline), (inputs[0],)),
              "fusion_ms": (FusionGraph(pipeline, layout), (*flat, *inputs[1:]))}
    head = _panoptic_head_args(pipeline, heads)
    if head is not None:
        graphs["head_ms"] = (PanopticHeadGraph(pipeline.network), head)
    times = {"head_ms": 0.0}
    for key, (graph, args) in graphs.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(_to_onnx(graph, args), options, providers=["CPUExecutionProvider"])
        # Inputs a graph does not use (a method's unused thresholds) are not graph inputs.
        used = {i.name for i in session.get_inputs()}
        feeds = {name: t.numpy() for name, t in zip(_input_names(len(args)), args, strict=True) if name in used}
        times[key] = median_ms(lambda s=session, f=feeds: s.run(None, f), warmup, iterations, clock=clock)
    return times


def _input_names(count: int) -> list[str]:
    return [f"input_{i}" for i in range(count)]


def _to_onnx(module: nn.Module, args: tuple[Tensor, ...]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=17,
                          input_names=_input_names(len(args)))
    return buffer.getvalue()


def flatten_heads(heads: Heads) -> tuple[HeadsLayout, list[Tensor]]:
    """Heads as one flat tensor list plus the layout to rebuild them."""
    layout, flat = [], []
    for name, value in heads.items():
        is_list = isinstance(value, list)
        layout.append((name, len(value) if is_list else None))
        flat.extend(value if is_list else [value])
    return layout, flat


def unflatten_heads(layout: HeadsLayout, tensors: tuple[Tensor, ...]) -> Heads:
    heads, position = {}, 0
    for name, length in layout:
        count = 1 if length is None else length
        chunk = tensors[position:position + count]
        heads[name] = chunk[0] if length is None else list(chunk)
        position += count
    return heads


class NetworkGraph(nn.Module):
    """image -> normalise -> network -> flat heads."""

    def __init__(self, pipeline: PanopticPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(flatten_heads(self.pipeline.network(self.pipeline.normalize(image)))[1])


class PanopticHeadGraph(nn.Module):
    """FPSNet's panoptic head alone: (features, attention masks) -> logits."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, features: Tensor, masks: Tensor) -> Tensor:
        return self.network.panoptic_head(features, masks)


class FusionGraph(nn.Module):
    """(flat heads, six thresholds, label divisor) -> the pipeline's outputs (OUTPUT_NAMES)."""

    def __init__(self, pipeline: PanopticPipeline, layout: HeadsLayout) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.layout = layout

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        count = len(tensors) - 7
        heads = unflatten_heads(self.layout, tensors[:count])
        thresholds = RuntimeThresholds(*tensors[count:count + 6])
        return self.pipeline.fusion(heads, thresholds, tensors[-1])
