"""Evaluation: pairwise judging, score parsing, protocols and bias diagnostics, reports."""
