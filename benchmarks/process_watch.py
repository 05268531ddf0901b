"""Run a command as a whole process under a time limit, and when it stalls, say where: the benchmarks that time
`distill fit` end to end (fit_overhead.py, headline_fit.py) use it so that a stall costs one limit, shows as a row,
and leaves a trace.

The command runs in a session of its own, with benchmarks/stall_site on PYTHONPATH (its sitecustomize lets every
Python process of the group, data-loader workers included, write its threads' stacks on SIGUSR1). On time-out the
watcher lists the group's processes (state, CPU seconds, threads; from /proc), signals SIGUSR1, waits a moment,
kills the group and keeps the stacks' innermost frames.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SITE = Path(__file__).resolve().parent / "stall_site"
FRAMES_KEPT = 4  # innermost frames per thread in the summary
# beyond those, each thread's innermost frame in these packages: where in the training the wait started
OWN_CODE = ("/distill/", "/lightning/", "/benchmarks/", "/torch/utils/data/")


@dataclass
class Outcome:
    returncode: int | None  # None: timed out (killed)
    wall: float
    cpu: float  # user + system of the whole group that was waited for (data-loader workers included)
    report: list[str] = field(default_factory=list)  # on time-out: the processes and where their threads were

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_watched(
    command: list[str],
    log: Path,
    timeout: float | None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    on_poll: Callable[[float], None] | None = None,
) -> Outcome:
    """Run `command` (stdout and stderr to `log`) for at most `timeout` seconds; `on_poll(elapsed)` every 0.2 s."""
    stacks = Path(tempfile.mkdtemp(prefix="stacks_"))
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), env.get("PYTHONPATH")]))
    env["DISTILL_STACKS_DIR"] = str(stacks)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    report: list[str] = []
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
        while process.poll() is None:
            elapsed = time.perf_counter() - start
            if timeout is not None and elapsed > timeout:
                report = stall_report(process.pid, stacks)
                kill_group(process)
                break
            if on_poll is not None:
                on_poll(elapsed)
            time.sleep(0.2)
        else:
            kill_group(process)  # workers a finished process left behind, if any
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shutil.rmtree(stacks, ignore_errors=True)
    return Outcome(None if report else process.returncode, wall, cpu, report)


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def group_members(pgid: int) -> list[int]:
    """The pids of process group `pgid` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # after the command name: state, ppid, pgrp
                members.append(int(entry.name))
    return sorted(members)


def describe(pid: int) -> str:
    """`pid P (parent Q): state S, C s CPU, T threads, <command line>` from /proc."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        line = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"pid {pid}: gone"
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks  # utime, stime
    words = [Path(w).name if "/" in w else w for w in line.split()]
    return (
        f"pid {pid} (parent {stat[1]}): state {stat[0]}, {cpu:.1f} s CPU, {stat[17]} threads, {' '.join(words)[:100]}"
    )


def stall_report(pgid: int, stacks: Path, wait: float = 2.0) -> list[str]:
    """The group's processes, then the innermost frames of each of their threads (SIGUSR1, see stall_site)."""
    members = group_members(pgid)
    lines = ["processes at the time-out:", *(f"  {describe(pid)}" for pid in members)]
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
    time.sleep(wait)
    for pid in members:
        file = stacks / f"{pid}.txt"
        dumped = summarize_stacks(file.read_text(errors="replace")) if file.is_file() else []
        # a process past its interpreter's shutdown, or not Python, writes none
        lines += dumped or [f"stacks of pid {pid}: none written (exiting, or no Python there)"]
    return lines


FRAME = re.compile(r'\s*File "(?P<path>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def summarize_stacks(text: str) -> list[str]:
    """A faulthandler dump cut to the innermost FRAMES_KEPT frames of each thread (and its innermost frame in
    OWN_CODE below those), paths to their last two parts."""
    lines: list[str] = []
    kept, own = 0, False
    for raw in text.splitlines():
        if raw.startswith("pid "):
            lines.append(f"stacks of {raw}:")
        elif "(most recent call first)" in raw:
            lines.append(f"  {raw.strip()}")
            kept, own = 0, False
        elif frame := FRAME.match(raw):
            path = "/".join(Path(frame["path"]).parts[-2:])
            if kept < FRAMES_KEPT:
                lines.append(f"    {path}:{frame['line']} {frame['func']}")
                kept += 1
                own = own or any(part in frame["path"] for part in OWN_CODE)
            elif not own and any(part in frame["path"] for part in OWN_CODE):
                lines.append(f"    ... {path}:{frame['line']} {frame['func']}")
                own = True
    return lines if any("most recent call" in line for line in lines) else []
