"""The benchmark's results: every round's figures, the checks of their targets, the table, the
machine they were measured on, and the JSON document (``bench/results/latest.json``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databases import sql
from figures import BY_NAME, FIGURES
from services import REPO

if TYPE_CHECKING:
    import redis as redis_mod


@dataclass
class Results:
    """Each figure's value per round (``per_round``), and each run's whole result (``runs``)."""

    per_round: dict[str, list[float]] = field(default_factory=lambda: {f.name: [] for f in FIGURES})
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, figure: str, value: float | None) -> None:
        if figure not in BY_NAME:
            raise KeyError(f"{figure}: not a figure of bench/figures.py")
        if value is not None:
            self.per_round[figure].append(value)

    def keep(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.runs.setdefault(name, []).append(result)
        return result

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.per_round.items() if v}

    def measured(self) -> dict[str, list[float]]:
        return {k: v for k, v in self.per_round.items() if v}


@dataclass(frozen=True)
class Check:
    figure: str
    vs: str | None
    value: float
    target: str
    met: bool


def checks(results: Results) -> list[Check]:
    """Each target whose figures were measured: a ratio is the median of the per-round ratios."""
    per_round, out = results.per_round, []
    for fig in FIGURES:
        for t in fig.targets:
            if not per_round[fig.name] or (t.vs and not per_round[t.vs]):
                continue
            if t.vs:
                pairs = zip(per_round[fig.name], per_round[t.vs], strict=False)
                ratios = [a / b for a, b in pairs if b]
                if not ratios:
                    continue
                value = statistics.median(ratios)
            else:
                value = statistics.median(per_round[fig.name])
            out.append(Check(fig.name, t.vs, value, t.text(fig.unit), t.met(value)))
    return out


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"  # CPU per event: tenths of a millisecond


def table(results: Results, params: dict[str, Any]) -> tuple[str, list[Check]]:
    """The medians, one line per figure (and per further target), in bench/figures.py's order.
    ``params`` fills the figures' labels and notes (``{threads}``, ``{baseline}``, ...)."""
    med, found = results.medians(), checks(results)

    def vs_label(c: Check) -> str:
        return (BY_NAME[c.vs].label.format_map(params) or c.vs) if c.vs else ""

    w = max([22, *(len(vs_label(c)) for c in found)]) + 1
    tw = max([15, *(len(c.target) for c in found)]) + 1
    head = f"{'figure':<24}{'value':>10}  {'unit':<11}{'ratio':>7}  {'vs':<{w}}"
    header = f"{head}{'target':<{tw}}met"
    lines = [header, "-" * len(header)]
    for fig in FIGURES:
        if fig.name not in med:
            continue
        mine = [c for c in found if c.figure == fig.name]
        first = f"{fig.name:<24}{fmt(med[fig.name]):>10}  {fig.unit:<11}"
        if not mine:
            note = fig.note.format_map(params)
            lines.append((first + (f"{'':>7}  {note}" if note else "")).rstrip())
        for i, c in enumerate(mine):
            lead = first if i == 0 else " " * len(first)
            ratio = f"{c.value:.2f}" if c.vs else ""
            met = "yes" if c.met else "NO"
            lines.append(f"{lead}{ratio:>7}  {vs_label(c):<{w}}{c.target:<{tw}}{met}")
    return "\n".join(lines), found


def machine_info(pg_url: str, redis: redis_mod.Redis) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import celery
    import httpx

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "postgresql": sql(pg_url, "SHOW server_version")[0][0],
        "redis": redis.info("server").get("redis_version"),
        "celery": celery.__version__,
        "httpx": httpx.__version__,
        "commit": git_head(),
    }


def git_head() -> str | None:
    """The checked-out commit, read from .git without running git."""
    git = REPO / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(path)
