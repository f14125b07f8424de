"""Runtimes: ONNX export, backends (onnxruntime, torch, tensorrt), engine building and caching."""
