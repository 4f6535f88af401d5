"""Optimizer pieces: per-step schedules and parameter groups."""
