"""bench/bench_emulated_arena.py's pure parts: time to a target accuracy from metrics rows, the
table and the last line, the runs' overrides. No namespaces, no processes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the bench script imports its siblings by name
_SPEC = importlib.util.spec_from_file_location("bench_emulated_arena",
                                               ROOT / "bench" / "bench_emulated_arena.py")
assert _SPEC is not None and _SPEC.loader is not None
arena = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_emulated_arena"] = arena
_SPEC.loader.exec_module(arena)


def _rows(times: list[float], accuracy: dict[int, float]) -> list[dict]:
    rows, wall = [], 0.0
    for t, seconds in enumerate(times):
        wall += seconds
        row = {"iteration": t, "iteration_time": seconds, "wall_time": wall}
        if t in accuracy:
            row["test_accuracy"] = accuracy[t]
        rows.append(row)
    return rows


def test_time_to_accuracy_is_the_end_of_the_iteration_before_the_evaluation() -> None:
    # evaluation at t = 0, 2, 4: row t holds the parameters after t iterations
    rows = _rows([1.0, 2.0, 1.5, 0.5, 3.0, 1.0], {0: 0.1, 2: 0.7, 4: 0.9})
    reached = arena.time_to_accuracy(rows, 0.85)
    assert reached == arena.Reached(seconds=1.0 + 2.0 + 1.5 + 0.5, iterations=4, accuracy=0.9)
    assert arena.time_to_accuracy(rows, 0.7).iterations == 2
    assert arena.time_to_accuracy(rows, 0.95) is None


def test_the_final_accuracy_counts_as_the_last_point() -> None:
    rows = _rows([1.0, 1.0, 1.0, 1.0], {0: 0.1, 2: 0.5})
    summary = {"iterations": 4, "wall_time": 4.0, "test_accuracy": 0.9, "runtime": "ddp"}
    assert arena.time_to_accuracy(rows, 0.85, summary) == arena.Reached(4.0, 4, 0.9)
    assert arena.time_to_accuracy(rows, 0.85, {**summary, "test_accuracy": 0.8}) is None
    assert arena.accuracy_points(rows, summary)[-1] == (4, 4.0, 0.9)


def test_outcome_table_and_last_line() -> None:
    def run(label: str, runtime: str, times: list[float], acc: dict[int, float],
            final: float) -> object:
        rows = _rows(times, acc)
        summary = {"iterations": len(times), "wall_time": rows[-1]["wall_time"],
                   "test_accuracy": final, "runtime": runtime}
        return arena.outcome(label, rows, summary, 0.85)

    outcomes = [run("DDP", "ddp", [1.0] * 4, {0: 0.1, 2: 0.9}, 0.9),
                run("backup workers", "sharded", [0.75] * 4, {0: 0.1, 2: 0.5}, 0.88),
                run("local SGD", "local_sgd", [0.5] * 4, {0: 0.1, 2: 0.5}, 0.6),
                run("coded (7) m=2", "sharded", [0.25] * 4, {0: 0.1, 2: 0.86}, 0.9),
                run("coded (7) m=4, load 4", "sharded", [0.2] * 4, {0: 0.1, 2: 0.3}, 0.5)]
    ddp = outcomes[0]
    assert ddp.reached == arena.Reached(2.0, 2, 0.9)
    assert ddp.s_per_iteration == pytest.approx(1.0)  # the rows without an evaluation
    assert ddp.evaluations == 1  # at t = 0, before the target's
    lines = arena.table(outcomes, 0.85)
    assert "target test accuracy 0.85" in lines[0]
    assert lines[1].split()[:5] == ["DDP", "ddp", "2.0s", "1.00x", "2"]
    assert "3.0s" in lines[2] and "1.50x" in lines[2]  # backup: its final point, 4 x 0.75 s
    assert "never" in lines[3] and ">4" in lines[3]
    assert "0.25x" in lines[4]
    assert arena.last_line(outcomes, "stall_frequent", 100.0, 4) == (
        "emulated arena stall_frequent 100mbit n=4: sharded coded 0.25x DDP "
        "time-to-accuracy, backup 1.50x, local SGD never")


def test_runs_use_the_arena_mitigations_on_the_real_runtimes() -> None:
    plan = arena.runs(4, 1, [2, 4])
    assert list(plan) == ["DDP", "backup workers", "local SGD", "coded (7) m=2",
                          "coded (7) m=4, load 4"]
    assert plan["backup workers"][:2] == ["mitigation=backup_workers", "trainer=sharded"]
    assert plan["local SGD"][:2] == ["mitigation=local_sgd", "trainer=local_sgd"]
    assert "assignment.s=1" in plan["coded (7) m=2"]  # load 1 + m = 3 <= n
    assert "assignment.s=0" in plan["coded (7) m=4, load 4"]  # 1 + m > n: load m
    assert all(ov[-2:] == ["assignment.n=4", "straggler.s=1"] for ov in plan.values())


@pytest.mark.parametrize(("argv", "message"), [
    (["--regime", "nosuch"], "--regime nosuch: not in conf/regime/ (delay, persistent"),
    (["--ms", "2", "3"], "--ms 2 3: construction (7) has mitigations for m in [1, 2, 4] only"),
    (["--iterations", "0"], "argument --iterations: must be ≥ 1 (got 0)"),
    (["--stall-s", "-1"], "argument --stall-s: must be > 0 (got -1)"),
    (["--s", "-1"], "argument --s: must be ≥ 0 (got -1)"),
])
def test_a_bad_regime_or_m_is_refused_in_one_line(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    monkeypatch.setattr(arena.emulated, "run_bench", lambda *a: built.append(a) or 0)
    with pytest.raises(SystemExit) as exit_:
        arena.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert not built  # refused before any star or run
