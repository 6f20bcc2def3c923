"""Everything that records or reports runs: metric sinks (JSONL, W&B), progress bars,
provenance, sweeps, app jobs, and the report app's pieces (runs, groups, figures, W&B)."""
