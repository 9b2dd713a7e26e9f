"""The tiny offline base model (placeholder until `vichat tiny build` lands)."""
