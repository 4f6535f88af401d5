"""Probes: pure functions on frozen features or backbones (kNN, linear, fine-tune, retrieval, maps, corruptions,
selection, duplicates, cleaning)."""
