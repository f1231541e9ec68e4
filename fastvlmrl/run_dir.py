"""A run directory's life: a free name when none was given, one process at a time (a lock), a
graceful stop on Ctrl-C or SIGTERM, and a directory left by a run that never reached its first
update reused rather than refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

# what a run writes before its first update; a directory holding only these is reused
_BEFORE_FIRST_UPDATE = ("config.yaml", "metrics.jsonl", "samples.jsonl", "curves.png", "tensorboard", "reference",
                        "wandb", "wandb_id")


def holds_updates(run_dir: Path) -> bool:
    """Whether the directory holds a run worth keeping: a checkpoint or a logged update."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints").exists() or (run_dir / "eval.json").exists():
        return True
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and '"update"' in metrics.read_text()


def free_run_name(out_dir: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3`, ... : the first that holds no run (the preset's name is a
    default, and a second run of a preset must not collide with the first)."""
    candidate, number = name, 1
    while holds_updates(Path(out_dir) / candidate) or is_locked(Path(out_dir) / candidate):
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def clear_before_first_update(run_dir: Path) -> bool:
    """Remove what a run that stopped before its first update left (it cannot be resumed, and
    its rerun should not have to pick another name). True if anything was removed."""
    removed = False
    for name in _BEFORE_FIRST_UPDATE:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
            removed = True
        elif path.exists():
            path.unlink()
            removed = True
    return removed


def is_locked(run_dir: Path) -> bool:
    lock = RunLock(run_dir)
    try:
        lock.acquire(create=False)
    except RunInUse:
        return True
    lock.release()
    return False


class RunInUse(ValueError):
    pass


class RunLock:
    """An exclusive lock on runs/<name>/.lock for the process's lifetime (flock: the kernel
    releases it when the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def acquire(self, create: bool = True) -> RunLock:
        if self.file is not None:
            return self
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        if not self.path.exists() and not create:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            owner = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise RunInUse(f"{self.path.parent} is in use by a running fastvlmrl ({owner}): wait for it to end, "
                           "or stop it (Ctrl-C saves a checkpoint) before resuming") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunStopped(Exception):
    """A run stopped on request at a safe point (`message` says how to continue it)."""


class GracefulStop:
    """The first Ctrl-C (SIGINT) or SIGTERM asks the run to stop at its next safe point (after the
    update in progress, with a checkpoint); a second Ctrl-C stops at once (KeyboardInterrupt).
    Handlers are installed only in the main thread, and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, notify=print):
        self.requested = False
        self.notify = notify
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.notify("stop requested: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
