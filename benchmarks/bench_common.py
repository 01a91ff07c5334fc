"""Helpers shared by the benchmark scripts: timing, figures with units, the machine's facts.

NumPy and the standard library only, so that every script (and ``run.py`` before it imports
TensorFlow) can use it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any


def emit_json(result: Any, path: str | os.PathLike | None) -> None:
    """Prints ``result`` as indented JSON; with a ``--json`` path, writes the same text there."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


def timed(function: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(wall_s, cpu_s, result)`` of one call; CPU seconds are this process's, all threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def interleaved_best(
    functions: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Best (least) wall and CPU seconds of each function, timed in alternating rounds.

    On a machine shared with other jobs the load changes from second to second: alternating
    the candidates round by round exposes them to the same load, and the least time of each is
    the one least disturbed. Ratios of these are what the benchmarks report.

    Args:
        functions: name -> function of no argument.
        repeats: timed rounds (>= 1).
        warmup: untimed calls of each function first (tracing, caches).

    Returns:
        name -> ``{"wall_s", "cpu_s", "walls"}`` (``walls``: every timed round).
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    walls: dict[str, list[float]] = {name: [] for name in functions}
    cpus: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(max(1, repeats)):
        for name, function in functions.items():
            wall, cpu, _ = timed(function)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {
        name: {
            "wall_s": min(walls[name]),
            "cpu_s": min(cpus[name]),
            "walls": [round(w, 4) for w in walls[name]],
        }
        for name in functions
    }


def figure(
    value: float | int | None,
    unit: str,
    *,
    target: str | None = None,
    met: bool | None = None,
    note: str | None = None,
    status: str = "ok",
) -> dict[str, Any]:
    """One reported number: ``{"value", "unit", "target", "met", "status"[, "note"]}``.

    ``target`` is a readable condition (``">= 0.5"``) or None when the issue sets none; ``met``
    is None when there is no target or no value. ``status`` is ``"ok"``, ``"estimated"``,
    ``"skipped"``, ``"failed"`` or ``"not run"``.
    """
    if isinstance(value, float):
        value = round(value, 4)
    out: dict[str, Any] = {
        "value": value,
        "unit": unit,
        "target": target,
        "met": None if value is None or met is None else bool(met),
        "status": status,
    }
    if note:
        out["note"] = note
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    """Total physical memory in GiB (Linux /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model, OS and Python of this machine (no TensorFlow import)."""
    return {
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
