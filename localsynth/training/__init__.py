"""Fine-tuning an encoder on real or synthetic rows (accelerate, optional LoRA), and evaluating it."""
