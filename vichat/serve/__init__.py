"""Serving: one base model in memory with many LoRA adapters, streaming; remote OpenAI-compatible backends."""
