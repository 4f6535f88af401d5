"""Stages: each runs probes over the compared models and writes its own JSON (classification, detection, maps,
robustness, cost, data check) or a command's outputs (embed, select, curate). Stages never import the report."""
