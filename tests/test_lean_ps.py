"""The lean parameter server of trainer=distributed: only logged rows pay for metrics, one
flat buffer per message, parameters in ``trainer.param_dtype``, non-blocking sends, the
PS's thread count, and the CUDA guards (no test needs a GPU)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agc_pipeline.errors import ConfigError
from agc_pipeline.train import build_trainer, run_training
from agc_pipeline.training import ps as ps_module
from agc_pipeline.training.coded_step import combine, combine_into
from agc_pipeline.training.ps import ParameterServer, ps_threads
from agc_pipeline.training.safe_kill import safe_kill
from agc_pipeline.training.state import StepResult
from agc_pipeline.training.wire import (
    FRAME_SLACK,
    HEADER_BYTES,
    PARAMS_PREFIX,
    Command,
    Frame,
    Header,
    Kind,
    Transport,
    WireFormat,
    load_parameters,
    write_parameters,
)
from tests.conftest import ROOT, compose_config
from tests.test_distributed import (
    CODE7,
    DIST,
    FAST,
    FRC,
    delay_trace,
    final_params,
    rows,
    train,
)

#: a test that hangs ends the session, saying so with every thread's stack, after 3 min
#: (tests/conftest.py: watchdog)
pytestmark = pytest.mark.watchdog(180)

# ------------------------------------------------------------------------------------------
# metrics only on logged rows


def count_work(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Record (iteration, forward passes of the PS's model, autograd.grad calls) per PS step:
    the PS's only expensive work besides decoding."""
    calls: list[tuple[int, int, int]] = []
    counter = {"forward": 0, "grad": 0}
    original_step, original_grad = ParameterServer.step, torch.autograd.grad

    def grad(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        counter["grad"] += 1
        return original_grad(*args, **kwargs)

    def step(self: ParameterServer, evaluate: bool = False) -> StepResult:
        if not getattr(self, "_counted", False):
            self.model.register_forward_hook(
                lambda *_: counter.__setitem__("forward", counter["forward"] + 1))
            self._counted = True
        before = dict(counter)
        result = original_step(self, evaluate)
        calls.append((result.row["iteration"], counter["forward"] - before["forward"],
                      counter["grad"] - before["grad"]))
        return result

    monkeypatch.setattr(ParameterServer, "step", step)
    monkeypatch.setattr(torch.autograd, "grad", grad)
    return calls


@pytest.mark.parametrize("log_every,logged", [(1, [0, 1, 2, 3, 4]), (2, [0, 2, 4]),
                                              (3, [0, 3, 4]), (10, [0, 4])])
def test_the_ps_computes_metrics_only_on_logged_rows(log_every: int, logged: list[int],
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One forward pass (train loss) and one true gradient (grad_error) on each logged row,
    none on the others; the logged rows equal the simulated trainer's."""
    simulated = run_training(compose_config("train", [*FAST, *CODE7]), tmp_path / "sim")
    reference = {r["iteration"]: r for r in rows(tmp_path / "sim")}
    calls = count_work(monkeypatch)
    summary, out = train(tmp_path / "dist", *CODE7, f"trainer.log_every={log_every}",
                         "trainer.grad_error=true")
    assert summary["status"] == "completed"
    assert [c[0] for c in calls] == list(range(5))
    assert [(f, g) for t, f, g in calls] == [(1, 1) if t in logged else (0, 0)
                                            for t, _, _ in calls]
    assert [r["iteration"] for r in out] == logged
    for r in out:
        ref = reference[r["iteration"]]
        assert r["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5)
        assert r["grad_error"] == pytest.approx(ref["grad_error"], rel=1e-4, abs=1e-9)
        assert r["grad_error"] > 1e-4  # construction (7) is approximate: a real check
    assert summary["final_train_loss"] == pytest.approx(simulated["final_train_loss"],
                                                        rel=1e-5)


def test_without_grad_error_the_ps_takes_no_gradient(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_work(monkeypatch)
    _, out = train(tmp_path, *CODE7, "trainer.log_every=2", "trainer.grad_error=false")
    assert [(t, f, g) for t, f, g in calls] == [(0, 1, 0), (1, 0, 0), (2, 1, 0), (3, 0, 0),
                                               (4, 1, 0)]
    assert [r["grad_error"] for r in out] == [None, None, None]
    assert all(np.isfinite(r["train_loss"]) for r in out)


# ------------------------------------------------------------------------------------------
# one flat buffer per message


def test_parameters_are_one_flat_message_in_the_wire_dtype() -> None:
    params = [torch.randn(3, 4), torch.randn(5)]
    flat = torch.cat([p.reshape(-1) for p in params])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        wire = WireFormat(d=17, length=9, grad_dtype=torch.float32, param_dtype=dtype)
        msg = torch.full((wire.params_bytes,), 255, dtype=torch.uint8)
        write_parameters(msg, 7, Command.RUN, params, dtype)
        assert msg.numel() == PARAMS_PREFIX + 17 * flat.to(dtype).element_size()
        assert msg[:PARAMS_PREFIX].view(torch.float64).tolist() == [7.0, 0.0]
        sent = msg[PARAMS_PREFIX:].view(dtype)
        assert torch.equal(sent, flat.to(dtype))  # one rounding, in the same pass
        targets = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
        load_parameters(sent, targets)
        assert all(t.dtype == torch.float32 for t in targets)
        assert torch.equal(torch.cat([t.detach().reshape(-1) for t in targets]),
                           flat.to(dtype).float())
        shares = targets[0].data_ptr() == sent.data_ptr()
        assert shares == (dtype == torch.float32)  # float32: views of the message, no copy


def test_a_worker_frame_is_header_then_payload_in_one_buffer() -> None:
    wire = WireFormat(d=10, length=5, grad_dtype=torch.float32, param_dtype=torch.float32)
    frame = Frame(Transport("gloo", torch.device("cpu")), wire)
    assert frame.buffer.numel() == wire.frame_bytes == HEADER_BYTES + (5 + FRAME_SLACK) * 4
    frame.payload.copy_(torch.arange(5.0))  # formed in place: packing copies nothing
    header = Header(3, Kind.GRADIENT, 5, 0.5)
    sent = frame.pack(header, frame.payload)
    assert sent.numel() == HEADER_BYTES + 20 and sent.data_ptr() == frame.buffer.data_ptr()
    assert Header.unpack(sent[:HEADER_BYTES].view(torch.float64)) == header
    assert sent[HEADER_BYTES:].view(torch.float32).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert frame.pack(Header(-1, Kind.HELLO), None).numel() == HEADER_BYTES
    with pytest.raises(ValueError, match="exceeds"):
        frame.pack(header, torch.zeros(5 + FRAME_SLACK + 1))


@pytest.mark.parametrize("chunk", [1 << 16, 4096, 7], ids=["one_tile", "tiles", "odd"])
@pytest.mark.parametrize("missing", [[], [2], [0, 7], [2, 5, 6], list(range(8))])
def test_the_ps_combination_matches_float64_to_float32_rounding(
        missing: list[int], chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """ĝ = Σ_{j∈𝓕} R(j, :)ᵀ message_j in float32 from float64 R: within float32 rounding of
    the float64 result, whatever the runs of survivors and the tiles of columns (the last
    one short); rows outside 𝓕 are never read."""
    from agc_pipeline.training import coded_step

    monkeypatch.setattr(coded_step, "COMBINE_CHUNK", chunk)
    rng = np.random.default_rng(0)
    n, m, length = 8, 2, 20_000
    messages = torch.randn(n, length)
    r = rng.normal(size=(n, m))
    mask = np.ones(n, dtype=bool)
    mask[missing] = False
    messages[torch.as_tensor(~mask)] = math.nan  # whatever a non-survivor's row holds
    out = combine_into(messages, r, mask, torch.full((m, length), math.nan))
    assert out.dtype == torch.float32
    if not mask.any():
        assert not out.any()
        return
    ref = combine(messages[torch.as_tensor(mask)].double(), r[mask], m * length)
    rel = float((out.reshape(-1).double() - ref).norm() / ref.norm())
    assert rel < 1e-6


@pytest.mark.parametrize("missing", [[], [3], list(range(8))])
def test_the_ps_combination_with_a_rank_deficient_r(missing: list[int]) -> None:
    """R of rank 1 (both columns proportional, zero rows among the survivors): still the
    float64 result to float32 rounding, elementwise; a block whose column of R is zero on 𝓕
    is exactly zero; no survivor gives ĝ = 0."""
    rng = np.random.default_rng(1)
    n, m, length = 8, 2, 3_001
    messages = torch.randn(n, length)
    col = rng.normal(size=n)
    col[[1, 6]] = 0.0
    r = np.stack([col, -2.5 * col], axis=1)
    mask = np.ones(n, dtype=bool)
    mask[missing] = False
    messages[torch.as_tensor(~mask)] = math.nan
    out = combine_into(messages, r, mask, torch.full((m, length), math.nan))
    if not mask.any():
        assert not out.any()
        return
    ref = combine(messages[torch.as_tensor(mask)].double(), r[mask], m * length).view(m, -1)
    scale = float(messages[torch.as_tensor(mask)].abs().max()) * np.abs(r[mask]).sum(0)
    assert torch.all((out.double() - ref).abs() <= torch.as_tensor(scale)[:, None] * 1e-6)
    zero = np.zeros((n, m))
    assert not combine_into(messages, zero, mask, torch.full((m, length), math.nan)).any()


# ------------------------------------------------------------------------------------------
# parameters in bfloat16 / float16


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_parameters_travel_in_param_dtype(dtype: str, tmp_path: Path) -> None:
    """Half the bytes from the PS; the master copy stays float32; the workers compute at
    the rounded parameters, so the run differs a little from the float32 one."""
    full, full_rows = train(tmp_path / "float32", *CODE7)
    summary, out = train(tmp_path / dtype, *CODE7, f"trainer.param_dtype={dtype}")
    d, n = summary["parameters"], summary["assignment"]["n"]
    assert all(r["bytes_from_ps"] == n * (PARAMS_PREFIX + 4 * d) for r in full_rows)
    assert all(r["bytes_from_ps"] == n * (PARAMS_PREFIX + 2 * d) for r in out)
    assert summary["distributed"]["param_dtype"] == dtype
    params, reference = final_params(tmp_path / dtype), final_params(tmp_path / "float32")
    assert all(p.dtype == torch.float32 for p in params)
    assert any(not torch.equal(p, q) for p, q in zip(params, reference, strict=True))
    for p, q in zip(params, reference, strict=True):
        torch.testing.assert_close(p, q, rtol=0.05, atol=0.02)
    assert summary["final_train_loss"] == pytest.approx(full["final_train_loss"], rel=0.02)


# ------------------------------------------------------------------------------------------
# a slow worker delays nobody


def test_a_slow_worker_does_not_delay_the_others(tmp_path: Path) -> None:
    """Worker 1 sleeps 1.5 s per iteration, the others 50 ms; with s = 1 the PS's iteration
    takes the fast workers' time, as in a run where nobody is slow."""
    fast = delay_trace(tmp_path / "fast.csv", [[1.0, 1.0, 1.0, 1.0]])
    slow = delay_trace(tmp_path / "slow.csv", [[1.0, 30.0, 1.0, 1.0]])
    common = [*FRC, "trainer.time_scale=0.05", "trainer.iterations=8",
              "trainer.param_dtype=bfloat16"]
    _, base = train(tmp_path / "fast", *common, *fast)
    summary, out = train(tmp_path / "slow", *common, *slow)
    assert all(r["survivors"] == 3 for r in out)
    assert summary["dead_workers"] == []
    typical = float(np.median([r["iteration_time"] for r in base]))
    median = float(np.median([r["iteration_time"] for r in out]))
    assert median < typical + 0.15, (median, typical)  # far below the slow worker's 1.5 s
    assert max(r["iteration_time"] for r in out) < 1.0


def test_a_stopped_worker_that_receives_nothing_delays_nobody(tmp_path: Path) -> None:
    """SIGSTOP worker 3 for 2 s (it cannot even take the parameters posted to it): the
    sends are non-blocking, so with s = 1 the iterations meanwhile keep the others' pace
    (50 ms), and after SIGCONT it carries on (not dead)."""
    paused: list[int] = []

    def pause_when_running() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            metrics = tmp_path / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                pid = json.loads((tmp_path / "workers.json").read_text())["workers"][3]["pid"]
                safe_kill(pid, signal.SIGSTOP)
                paused.append(pid)
                time.sleep(2.0)
                safe_kill(pid, signal.SIGCONT)
                return
            time.sleep(0.01)

    pauser = threading.Thread(target=pause_when_running, daemon=True)
    pauser.start()
    summary, out = train(tmp_path, *FRC, "trainer.s=1", "trainer.iterations=60",
                         "trainer.time_scale=0.05")
    pauser.join(5)
    assert paused, "the worker was never paused"
    assert summary["status"] == "completed" and summary["dead_workers"] == []
    assert out[-1]["wall_time"] > 2.5  # the run outlasted the pause
    assert max(r["iteration_time"] for r in out) < 1.0  # never the 2 s pause
    assert all(r["survivors"] == 3 and r["grad_error"] < 1e-10 for r in out)


# ------------------------------------------------------------------------------------------
# threads and devices


def test_the_ps_leaves_its_local_workers_their_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(ps_module.os, "sched_getaffinity", lambda _: set(range(16)))
    assert ps_threads(16, 8) == 8  # 16 cores, 8 single-threaded workers
    assert ps_threads(4, 8) == 4  # never more than it had
    assert ps_threads(16, 20) == 1  # oversubscribed: one thread
    monkeypatch.setattr(ps_module.os, "sched_getaffinity", lambda _: {0, 1})
    assert ps_threads(2, 8) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("overrides,message", [
    (["trainer.device=cuda"], "trainer.device=cuda but CUDA is not available"),
    (["trainer.device=cuda:1"], "trainer.device=cuda:1 but CUDA is not available"),
    (["trainer.backend=nccl"], "trainer.backend=nccl needs CUDA"),
])
def test_cuda_without_a_gpu_is_one_clear_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_trainer(compose_config("train", [*FAST, *DIST, *CODE7, *overrides]))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_simulated_cuda_without_a_gpu_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="trainer.device=cuda but CUDA is not available"):
        build_trainer(compose_config("train", [*FAST, "trainer.device=cuda"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_gpu_check_exits_cleanly_without_cuda(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check"]
    assert time.monotonic() - started < 30
    dry = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert dry.returncode == 0, dry.stderr
    for name in ("simulated-gpt-10m", "simulated-cpu-vs-gpu", "coded-gradient-bench",
                 "distributed-gloo-cuda", "distributed-gloo-bf16", "distributed-nccl"):
        assert name in dry.stdout
    assert "trainer.backend=nccl" in dry.stdout and "--device cuda" in dry.stdout
    assert not list(tmp_path.glob("*/summary.json"))  # nothing ran
