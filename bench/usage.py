"""What a process tree (a worker: main process + pool children) uses, read from ``/proc``: RSS,
sampled through a drain, and CPU seconds, read at its start and end."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses):
    field 3 (state) is index 0."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pids(root: int) -> list[int]:
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of the tree under ``root``: each live process's ``utime`` and
    ``stime``, plus ``cutime`` and ``cstime`` (its children that have exited and been waited
    for, such as a pool process that was replaced: they are no longer in the tree)."""
    ticks = 0
    for pid in tree_pids(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue  # gone meanwhile: its parent's cutime has it
        # utime, stime, cutime, cstime are fields 14-17 of stat(5): indexes 11-14 here.
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / CLOCK_TICKS


class RssSampler(threading.Thread):
    """Sums VmRSS over a process tree every ``interval`` seconds (the tree is re-read every 2 s)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.root = root
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def sample(self, pids: list[int]) -> int:
        total = sum(rss_kib(p) for p in pids)
        self.samples.append((time.perf_counter(), total))
        return total

    def run(self) -> None:
        pids, refreshed = tree_pids(self.root), time.monotonic()
        while not self._halt.is_set():
            if time.monotonic() - refreshed > 2:
                pids, refreshed = tree_pids(self.root), time.monotonic()
            self.sample(pids)
            self._halt.wait(self.interval)

    def finish(self) -> None:
        self._halt.set()
        self.join()
        self.sample(tree_pids(self.root))

    def at(self, when: float) -> int:
        """The first sample taken at or after ``when`` (perf_counter)."""
        for t, kib in self.samples:
            if t >= when:
                return kib
        return self.samples[-1][1]
