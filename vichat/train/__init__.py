"""LoRA training: presets, the dry-run planner, the trainer and the tiny offline default."""
