"""agc_pipeline: communication-efficient approximate gradient coding (arXiv:2603.22514)."""

import os as _os

# MKL may otherwise use fewer threads than asked for on a loaded machine, which changes the
# summation order of float32 products and with it the last bits of results (set before torch
# first calls MKL; an explicit MKL_DYNAMIC in the environment wins)
_os.environ.setdefault("MKL_DYNAMIC", "FALSE")

__version__ = "0.1.0"
