"""Training: the one loop (engine), checkpoints, and the trainers for image, record and fused models."""
