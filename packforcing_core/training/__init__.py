"""Training the mid compressor by self-distillation: the objective (distill), clips (data), the run's
settings (config), the loop and its checkpoints (trainer), the evaluation (evaluation). May import
sampling, cache, model, vae and io."""
