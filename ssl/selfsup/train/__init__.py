"""Training: the step-based accelerate loop, its state and its checkpoints."""
