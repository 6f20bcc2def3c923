"""agc_pipeline: communication-efficient approximate gradient coding (arXiv:2603.22514)."""

__version__ = "0.1.0"
