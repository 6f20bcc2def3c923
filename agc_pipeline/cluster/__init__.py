"""The cluster cost model (link and compute figures, iteration times) and the planner built
on it (``agc-plan``)."""
