"""One run per run folder: a lock file naming its holder, and no fresh start on top of another run's files.

``selfsup pretrain`` claims ``run.dir`` before any work: the main process creates ``RUN_DIR/.selfsup.lock``
(``O_EXCL``, so of two runs started together exactly one gets it) holding its host and pid, and checks
that a run that is not resuming starts in an empty folder. A second run on the same folder fails at once
naming the holder; a lock whose pid is dead on this host (a ``kill -9``, a crash) is taken over with a
warning. The lock is also the write test: a read-only run folder fails here, before any training. Under
DDP/FSDP only the main process touches the lock and every process raises the same error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selfsup.errors import ConfigError

log = logging.getLogger("selfsup")

LOCK_NAME = ".selfsup.lock"
# what a run writes at the top of its folder; run.overwrite=true removes these, never anything else: the trackers'
# folders when the new trackers start (selfsup.train.trackers), the rest once the model is built
TRACKER_OUTPUTS = ("tensorboard", "wandb")
RUN_OUTPUTS = ("checkpoints", "config.yaml", "metrics.jsonl", "summary.json")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces; fields after it are fixed
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is still the running holder (a zombie, or another process that got the pid, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    now = _start_time(pid)
    return started is None or now is None or now == started


def _writable_error(run_dir: Path, e: OSError) -> ConfigError:
    return ConfigError(f"run.dir={run_dir}: cannot write there ({e.strerror or e}); choose a writable folder")


class RunLock:
    """``RUN_DIR/.selfsup.lock`` held by this process; :meth:`release` removes it only while it is still ours."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Create the run folder and its lock; take over a stale lock; raise ConfigError when held or unwritable."""
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _writable_error(run_dir, e) from None
        path = run_dir / LOCK_NAME
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        text = json.dumps(me)
        for _ in range(3):  # a stale lock is removed, then created again; a racing run may win it
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                cls._take_over_if_stale(run_dir, path, me["host"])
                continue
            except OSError as e:
                raise _writable_error(run_dir, e) from None
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return cls(path, text)
        raise ConfigError(f"run.dir={run_dir}: another run keeps taking its lock {path}; use another run.dir")

    @staticmethod
    def _take_over_if_stale(run_dir: Path, path: Path, host: str) -> None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return  # released meanwhile: try again
        except OSError as e:
            raise _writable_error(run_dir, e) from None
        try:
            holder = json.loads(text)
            h_host, h_pid, h_started = str(holder["host"]), int(holder["pid"]), holder.get("started")
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"run.dir={run_dir}: unreadable lock file {path}; if no run is using this folder, "
                              f"delete it and start again") from None
        if h_host == host and not _alive(h_pid, h_started):
            log.warning("run.dir=%s: taking over the stale lock of pid %d on %s (no longer running; since %s)",
                        run_dir, h_pid, h_host, holder.get("since", "?"))
            if path.read_text() == text:  # still the stale one, not a lock a racing run just created
                path.unlink(missing_ok=True)
            return
        where = "this host" if h_host == host else f"host {h_host}"
        raise ConfigError(
            f"run.dir={run_dir} is in use by another run (pid {h_pid} on {where}, since {holder.get('since', '?')}); "
            f"wait for it or use another run.dir (if that run is gone, delete {path})"
        )

    def release(self) -> None:
        try:
            if self.path.read_text() == self.text:
                self.path.unlink()
        except OSError:
            pass


def check_fresh_start(run_dir: Path, *, resume: str | None, overwrite: bool) -> None:
    """A run that does not resume must not start among another run's files (its ``keep_last`` pruning would delete
    their checkpoints, and ``train.resume=auto`` later would mix both)."""
    if resume or overwrite:
        return
    found = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if found:
        shown = ", ".join(found[:4]) + (f" (+{len(found) - 4} more)" if len(found) > 4 else "")
        raise ConfigError(
            f"run.dir={run_dir} is not empty ({shown}); continue that run with train.resume=auto, or start a new one "
            f"over it with run.overwrite=true (removes its checkpoints, metrics and config)"
        )


def clear_previous_run(run_dir: Path, names: tuple[str, ...] = RUN_OUTPUTS) -> None:
    """``run.overwrite=true``: remove what a previous run wrote at the top of ``run_dir`` (``names`` of
    :data:`RUN_OUTPUTS` / :data:`TRACKER_OUTPUTS`); other files stay."""
    removed = []
    for name in names:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.warning("run.overwrite=true: removed the previous run's %s from %s", ", ".join(removed), run_dir)


def _check_writable(run_dir: Path) -> None:
    """A resumed run writes into ``checkpoints/`` too: probe it (os.access is always true for root)."""
    import tempfile

    folder = run_dir / "checkpoints"
    if folder.is_dir():
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise _writable_error(folder, e) from None


@contextmanager
def claim_run_dir(accelerator, run_dir: str | Path, *, resume: str | None, overwrite: bool) -> Iterator[None]:
    """Hold ``run_dir`` for the duration of a run (main process); every process raises the same ConfigError."""
    run_dir = Path(run_dir)
    lock, message = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock.acquire(run_dir)
            _check_writable(run_dir)
            check_fresh_start(run_dir, resume=resume, overwrite=overwrite)
        except ConfigError as e:
            message = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [message]
        broadcast_object_list(box)  # also a barrier: nobody starts before the folder is claimed
        message = box[0]
    try:
        if message:
            raise ConfigError(message)
        yield
    finally:
        if lock is not None:
            lock.release()
