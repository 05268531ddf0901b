"""benchmarks/process_watch.py: a stalled process group is stopped at its limit and says where each process waited."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from benchmarks.process_watch import run_watched, summarize_stacks

# a parent blocked on a queue nobody fills, and a forked child asleep in a function of its own
STALLING = textwrap.dedent(
    """
    import multiprocessing, sys, time

    def asleep_in_the_child():
        time.sleep(60)

    if __name__ == "__main__":
        context = multiprocessing.get_context("fork")
        context.Process(target=asleep_in_the_child, daemon=True).start()
        print("started", flush=True)
        context.Queue().get()
    """
)


def test_a_stalled_group_is_stopped_and_traced(tmp_path: Path) -> None:
    script = tmp_path / "stall.py"
    script.write_text(STALLING)
    log = tmp_path / "stall.log"
    outcome = run_watched([sys.executable, str(script)], log, timeout=1.5, cwd=tmp_path)
    assert outcome.timed_out and outcome.returncode is None
    assert outcome.wall < 10  # stopped, not waited for
    report = "\n".join(outcome.report)
    assert report.count("(parent ") == 2  # both processes listed from /proc
    assert "asleep_in_the_child" in report  # the forked child wrote its own stack
    assert "queues.py" in report and " get" in report  # the parent's: waiting on the queue
    assert "started" in log.read_text()


def test_a_process_that_ends_in_time_has_no_report(tmp_path: Path) -> None:
    outcome = run_watched([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "log", timeout=30)
    assert (outcome.returncode, outcome.timed_out, outcome.report) == (3, False, [])


def test_summarize_keeps_the_innermost_frames_and_the_first_own_one() -> None:
    dump = "pid 7, parent 1\nCurrent thread 0x1 (most recent call first):\n" + "".join(
        f'  File "/usr/lib/python3/{name}.py", line {i} in f{i}\n' for i, name in enumerate("abcdef")
    )
    dump += '  File "/x/site-packages/distill/engine/pipeline.py", line 9 in fit\n'
    dump += '  File "/x/site-packages/distill/cli/main.py", line 3 in main\n'
    lines = summarize_stacks(dump)
    assert lines[0] == "stacks of pid 7, parent 1:"
    assert [line.split()[-1] for line in lines[2:]] == ["f0", "f1", "f2", "f3", "fit"]
    assert summarize_stacks("pid 8, parent 1\n") == []  # signalled too late to write anything
