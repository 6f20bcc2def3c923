"""Coded SGD: the runtime-independent pieces and the runtimes that use them.

* :mod:`~agc_pipeline.training.coded_step` — blocks, worker messages, decoding, α (Sections
  II and VII);
* :mod:`~agc_pipeline.training.coded_gradient` — coded gradients in one weighted backward
  pass (Section III); :mod:`~agc_pipeline.training.gradients` — the k partial gradients
  (the reference path); :mod:`~agc_pipeline.training.batches` — minibatches per subset;
* :mod:`~agc_pipeline.training.optim` and :mod:`~agc_pipeline.training.schedules` — the
  PS's optimizer, learning-rate schedules and clipping;
* a runtime's parts: :mod:`~agc_pipeline.training.workload` (data split, minibatches,
  metrics), :mod:`~agc_pipeline.training.coded` (code, straggler draws, α, coded gradient:
  coded runtimes only), :mod:`~agc_pipeline.training.state` (iteration, totals, optimizer,
  clock: what the loop commits); :mod:`~agc_pipeline.training.settings` — the trainer keys;
* :mod:`~agc_pipeline.training.runtime` — the runtime protocol and base classes, and
  :mod:`~agc_pipeline.training.loop` — the one training loop (commit, progress, metrics
  rows, checkpoint cadence, graceful stop) every runtime plugs into;
* runtimes: :mod:`~agc_pipeline.training.simulated` (n workers and the PS in one process)
  and ``trainer=distributed`` on torch.distributed: :mod:`~agc_pipeline.training.ps` (the
  parameter server), :mod:`~agc_pipeline.training.distributed` (settings, waiting rule,
  faults), :mod:`~agc_pipeline.training.processes` (the PS's processes and liveness),
  :mod:`~agc_pipeline.training.worker` and :mod:`~agc_pipeline.training.wire` (messages
  and receiving threads);
  ``trainer=ddp``: :mod:`~agc_pipeline.training.ddp` (DistributedDataParallel, the uncoded
  baseline; settings in :mod:`~agc_pipeline.training.ddp_settings`);
  :mod:`~agc_pipeline.training.launch` — process start and rendezvous shared by the
  multi-process runtimes;
* :mod:`~agc_pipeline.training.checkpoint` — checkpoints, run-dir locks and resumable metrics.
"""
