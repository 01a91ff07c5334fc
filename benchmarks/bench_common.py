"""Helpers shared by the benchmark scripts: timing, figures with units, the machine's facts,
the provenance every results JSON carries.

The standard library only, so that every script (and ``run.py`` before it imports TensorFlow)
can use it.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARIES = ("pancseg-tf", "tensorflow", "keras", "numpy", "scipy")


#: What a results file states at its top level, from its ``provenance`` block (the protocol's
#: rule (e); `with_provenance_summary`).
PROVENANCE_SUMMARY = {
    "commit": "git_commit",
    "config_sha256": "config_sha256",
    "command": "command",
}


def with_provenance_summary(result: Any) -> Any:
    """``result`` with ``commit``, ``config_sha256`` and ``command`` first, copied from its
    ``provenance`` block (`provenance`); a result without one, or already stating them, as it
    is."""
    if not isinstance(result, dict) or not isinstance(result.get("provenance"), dict):
        return result
    summary = {
        key: result["provenance"].get(source)
        for key, source in PROVENANCE_SUMMARY.items()
        if key not in result
    }
    return {**summary, **result}


def emit_json(result: Any, path: str | os.PathLike | None) -> None:
    """Prints ``result`` as indented JSON; with a ``--json`` path, writes the same text there.
    A result with a ``provenance`` block states its commit, config hash and command at the top
    (`with_provenance_summary`)."""
    text = json.dumps(with_provenance_summary(result), indent=2)
    print(text)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


def network_spans(num_slices: int, chunk: int | None, overlap: int) -> list[tuple[int, int]]:
    """The slice spans `Segmenter`'s network runs over ``num_slices`` model-grid slices: its
    chunks (`pancseg_tf.inference.chunk_spans`, a shared slice in each), or the whole volume as
    one span where ``chunk`` is None."""
    if not chunk:
        return [(0, num_slices)]
    from pancseg_tf.inference.chunks import chunk_spans

    return chunk_spans(num_slices, chunk, overlap)


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


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(*args: str) -> str | None:
    """``git -C REPO ARGS`` output (trailing white space removed), None where git or the
    repository is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.rstrip() if done.returncode == 0 else None


def pancseg(*args: str, quiet: bool = False) -> str:
    """Runs ``pancseg ARGS`` in a child process of this interpreter, so that the checkout a
    benchmark runs from (through ``PYTHONPATH``) is the one that runs, and returns the command
    as a user types it, for a results file's record.

    By default it prints that line and lets the command's output through; a failure raises
    ``subprocess.CalledProcessError``. ``quiet`` captures the output instead and raises
    ``RuntimeError`` with the end of its stderr.
    """
    if args and args[0] == "pancseg":
        # ``pancseg pancseg prepare ...`` would fail only after the work before it.
        raise ValueError("pass the subcommand and its arguments, without 'pancseg'")
    line = shlex.join(["pancseg", *args])
    command = [sys.executable, "-m", "pancseg_tf.cli", *args]
    if not quiet:
        print("$ " + line, flush=True)
        subprocess.run(command, check=True)
        return line
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pancseg {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return line


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed), read from the
    package metadata without importing it (no TensorFlow start-up)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(
    config_path: str | os.PathLike | None = None, argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """What made a result: the code, its config, the command, the libraries, machine and date.

    Every results JSON under ``benchmarks/results/`` holds this (``benchmarks/PROTOCOL.md``,
    rule (e)), so that a number can be traced to the exact tree and command that made it.

    Args:
        config_path: the config file the result depends on (a run's ``config.yaml``); its
            SHA-256 is recorded. None: no config.
        argv: the command line (default ``sys.argv``: the script and its arguments).

    Returns:
        ``{"git_commit", "git_dirty", "git_dirty_paths", "package_path", "config",
        "config_sha256", "command", "argv", "python", "libraries", "machine", "date_utc"}``.
        ``git_commit`` and ``git_dirty`` are None outside a git checkout; ``git_dirty`` counts
        untracked files too (a script not yet committed changes what ran);
        ``git_dirty_paths`` lists at most 50 of the changed paths. ``package_path`` is the
        folder ``import pancseg_tf`` loads (found, not imported): with an editable install it
        can be another tree than the script's, unless ``PYTHONPATH`` names the script's.

    Raises:
        FileNotFoundError: ``config_path`` does not exist.
    """
    argv = list(sys.argv if argv is None else argv)
    status = _git("status", "--porcelain")
    dirty_paths = None if status is None else [line[3:] for line in status.splitlines()]
    spec = importlib.util.find_spec("pancseg_tf")
    package = None if spec is None or spec.origin is None else str(pathlib.Path(spec.origin).parent)
    config_hash = None
    if config_path is not None:
        config_path = pathlib.Path(config_path)
        if not config_path.is_file():
            raise FileNotFoundError(f"config file {config_path} does not exist")
        config_hash = file_sha256(config_path)
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if dirty_paths is None else bool(dirty_paths),
        "git_dirty_paths": None if dirty_paths is None else dirty_paths[:50],
        "package_path": package,
        "config": None if config_path is None else str(config_path),
        "config_sha256": config_hash,
        "command": shlex.join(argv),
        "argv": argv,
        "python": sys.executable,
        "libraries": library_versions(),
        "machine": machine_info(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
