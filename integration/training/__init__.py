"""The training engine behind Train QR-LoRA and train.py: session, memory fit, samples, checkpoints, processes, CLI."""
