"""``--py-spy``: one more drain, not counted, under ``py-spy record --gil``, and where the
worker's CPU time went, by package and by the engine's functions."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from services import BenchError, Proc


def find_py_spy(path: str) -> str:
    exe = shutil.which("py-spy", path=path)
    if exe is None:
        raise BenchError("--py-spy: py-spy is not installed (pip install py-spy)")
    return exe


def start_py_spy(path: str, pid: int, out: Path | None, logdir: Path) -> Proc | None:
    """py-spy (looked up on ``path``) recording the tree under ``pid`` into ``out``; None
    without ``out``."""
    if out is None:
        return None
    argv = [
        find_py_spy(path),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--gil",
        "--format",
        "raw",
    ]
    spy = Proc("py-spy", [*argv, "--rate", "200", "-o", str(out)], dict(os.environ), logdir)
    time.sleep(1.5)  # attaching takes a moment
    return spy


def stop_py_spy(spy: Proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(spy.pid, signal.SIGINT)  # py-spy writes its file on Ctrl-C
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.popen.wait(30)
    spy.stop()


def _package(frame: str) -> str:
    """``f (httpcore/_sync/http11.py:12)`` -> ``httpcore``; ``f (threading.py:3)`` -> threading."""
    m = re.search(r"\(([^():]+?)(?:\.py)?:\d+\)$", frame)
    if not m:
        return "?"
    return m.group(1).split("/")[0]


def summarize_profile(path: Path, top: int = 15) -> str:
    """Leaf (self) and inclusive shares of the samples, from py-spy's collapsed stacks."""
    leaf: dict[str, int] = {}
    incl: dict[str, int] = {}
    by_package: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        package = _package(frames[-1])
        by_package[package] = by_package.get(package, 0) + count
        # The engine's own functions (any line), with what they call.
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames if _package(f) == "dispatcher"}:
            incl[f] = incl.get(f, 0) + count
    if not total:
        return f"(no samples in {path})"
    out = [
        f"py-spy --gil of the worker during one drain: {total:,} samples of the thread holding "
        f"the GIL, so CPU time in Python ({path})"
    ]
    out.append(
        "  self time by package: "
        + ", ".join(
            f"{name} {count * 100 / total:.0f}%"
            for name, count in sorted(by_package.items(), key=lambda kv: -kv[1])[:12]
        )
    )
    for title, table in (("self", leaf), ("inclusive (dispatcher functions)", incl)):
        out.append(f"  top {top} by {title} time:")
        for frame, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"    {count * 100 / total:5.1f}%  {frame[:110]}")
    return "\n".join(out)
