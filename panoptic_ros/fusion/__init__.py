"""Fusion: network heads -> panoptic id map, semantic map and instance table, as one static graph.

core.py is the shared back half, one module per method (psn, rtps, lpsnet, fpsnet, spinet) the
front half, reference/ the literal NumPy versions the graph is tested against, and pipeline.py the
whole per-frame module (uint8 image -> normalise -> network -> fusion).
"""
