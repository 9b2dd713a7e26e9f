"""Translation job: protection of code and placeholders, cache, batching, retries, resume."""
