"""Loaded by every Python process started with this folder on PYTHONPATH (benchmarks/process_watch.py puts it there
for the processes it times): where `DISTILL_STACKS_DIR` is set, SIGUSR1 makes the process write the Python stack of
each of its threads to `<DISTILL_STACKS_DIR>/<pid>.txt`. Forked children (data-loader workers) get a file of their
own, so a watcher that signals a stalled process group learns where each of its processes is waiting."""

import faulthandler
import os
import signal

_FOLDER = os.environ.get("DISTILL_STACKS_DIR")
_FILES = []  # kept open: faulthandler writes to the file descriptor when the signal comes


def _register() -> None:
    try:
        file = open(os.path.join(_FOLDER, f"{os.getpid()}.txt"), "w")  # noqa: SIM115 (open for the process's life)
        file.write(f"pid {os.getpid()}, parent {os.getppid()}\n")
        file.flush()
        _FILES.append(file)
        faulthandler.register(signal.SIGUSR1, file=file, all_threads=True)
    except (OSError, RuntimeError, ValueError):  # a diagnostic: never the reason a process fails
        pass


if _FOLDER:
    _register()
    os.register_at_fork(after_in_child=_register)
