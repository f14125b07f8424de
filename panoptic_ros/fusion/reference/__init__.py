"""Literal, sequential NumPy references of the five fusions (slow, readable, for tests only).

Each follows its paper's words with loops over candidates and cells, on the same stride-4 fusion
grid as the static graph, and ends in `assemble.assemble_reference`.
"""
