"""Example data for the quickstart (not part of the training or evaluation path)."""
