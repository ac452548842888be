"""Fine-tuning: data, losses, metrics, checkpoints and the training loop."""
