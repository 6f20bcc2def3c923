"""Coded SGD: the runtime-independent coded step and the runtimes that use it.

* :mod:`~agc_pipeline.training.coded_step` — blocks, worker messages, decoding, α (§1, §6);
* :mod:`~agc_pipeline.training.gradients` — the k partial gradients in one backward pass;
* :mod:`~agc_pipeline.training.optim` — the PS's SGD (momentum, weight decay, overflow-safe);
* :mod:`~agc_pipeline.training.simulated` — n workers and the PS simulated in one process;
* ``trainer=distributed`` on torch.distributed: :mod:`~agc_pipeline.training.distributed`
  (settings, launch, processes, liveness), :mod:`~agc_pipeline.training.ps` (the parameter
  server's iteration), :mod:`~agc_pipeline.training.worker` (the worker loop) and
  :mod:`~agc_pipeline.training.wire` (messages and receiving threads);
* :mod:`~agc_pipeline.training.checkpoint` — checkpoints and resumable metrics files.
"""
