"""Local in-process judge (placeholder)."""
