"""The runtime's names, each defined once: the node's parameters, the commands' options and the
backend registry all read them here. Plain data, no imports, so the node's parameter table can
use it without loading any runtime."""

BACKENDS = ("onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
# backend -> the model files it loads; the first is the form models/ ships (the node's `model: psn`).
MODEL_SUFFIXES = {"onnxruntime": (".onnx",), "torch": (".pt", ".pth"), "tensorrt": (".onnx", ".engine")}
