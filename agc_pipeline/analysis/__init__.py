"""Approximation-error studies: the Monte Carlo engine and its plots."""

from agc_pipeline.analysis.engine import ErrorStudy, paper_grid, straggler_masks

__all__ = ["ErrorStudy", "paper_grid", "straggler_masks"]
