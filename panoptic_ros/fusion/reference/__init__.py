"""Literal NumPy references of the five fusions (slow, readable, for tests only).

Each module follows its paper's post-processing text on input pixels, sequentially where the paper
is sequential, one named function per step quoting the sentence it implements; choices where a
paper is silent are in the module's docstring and in models/README.md. `defaults.py` holds each
paper's default thresholds with their sources.
"""
