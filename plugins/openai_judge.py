"""OpenAI-compatible judge (placeholder)."""
