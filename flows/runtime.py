"""Process-level setup for running flows locally: one Prefect API that the flow and its Dask workers share, child
processes that die with the command, and a Ctrl-C that ends the command within seconds.

Children and interrupts, on Linux:
- the temporary Prefect server runs in its own session (a Ctrl-C in the terminal does not reach it, so the flow can
  still report its end) and gets SIGKILL from the kernel when this process dies, however it dies
  (`PR_SET_PDEATHSIG`, set before the server's program starts);
- Dask's worker processes exit by themselves when their parent goes (distributed's parent-alive pipe) and never
  see SIGINT (tasks.runner), so a Ctrl-C is handled once, here;
- the first SIGINT kills the workers (whatever they were computing is dropped: every task writes its data before
  its ledger status, so nothing half-written is marked done) and raises KeyboardInterrupt in the main thread, so the
  flow run, the cluster and the server close in order; if that takes longer than INTERRUPT_GRACE_S, or a second
  SIGINT comes, the remaining children are killed and the process exits at once. Either way the command prints one
  line and exits with status 130.

A full disk is reported the same way, in one line naming the store (`disk_full_message`).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import FrameType
from typing import Any

INTERRUPT_EXIT_STATUS = 130
"""What a shell reports for a command ended by SIGINT (128 + 2)."""
INTERRUPT_GRACE_S = 4.0
"""Seconds an interrupted command may spend closing its flow run, cluster and server before it is cut short."""
PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent thread dies (Linux; kept across execve)."""

DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform == 'linux':\n"
    f"    ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)  # the parent died before the line above took effect\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
"""`python -c DIE_WITH_PARENT PARENT_PID PROGRAM ARGS...`: run PROGRAM in place of this interpreter (same pid), to be
killed by the kernel when PARENT_PID dies. A launcher instead of a preexec_fn, which is unsafe in a threaded parent."""


def die_with_parent(command: list[str]) -> list[str]:
    """`command` wrapped so that its process gets SIGKILL when this process dies (Linux; elsewhere it just runs)."""
    return [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *command]


def uvicorn_command(port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of Prefect's own temporary server (prefect.server.api.server's ephemeral mode)."""
    import prefect
    from prefect.settings import get_current_settings

    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory"]
    command += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "error", "--lifespan", "on"]
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    return command, env


@cache
def temporary_server_class() -> type:
    """Prefect's SubprocessASGIServer, its server run in its own session and killed by the kernel if this process
    dies; always a new instance, never Prefect's per-port singleton. (Made on first use: Prefect imports in seconds,
    and this module must load fast enough to catch an early Ctrl-C.)"""
    from prefect.server.api.server import SubprocessASGIServer

    class TemporaryPrefectServer(SubprocessASGIServer):
        def __new__(cls, *args: Any, **kwargs: Any) -> TemporaryPrefectServer:
            return object.__new__(cls)

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            command, env = uvicorn_command(int(self.port or 0))
            return subprocess.Popen(die_with_parent(command), env=env, start_new_session=True)

    return TemporaryPrefectServer


KEEP_ON_INTERRUPT: set[int] = set()
"""Pids of children that outlive the first SIGINT: the temporary Prefect server, so the flow run can report its end."""


@contextmanager
def shared_prefect_api() -> Iterator[str | None]:
    """Use the configured Prefect API, or start one local server and point this process and its children at it.

    Without this, each Dask worker process would start its own temporary Prefect server (seconds of start-up
    and a separate database per worker, so task runs would not show up with their flow run).
    """
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    server = temporary_server_class()()
    try:
        server.start(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        KEEP_ON_INTERRUPT.add(server.server_process.pid)
        os.environ["PREFECT_API_URL"] = server.api_url
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                APILogHandler().flush()  # send queued run logs while the server still listens (also when interrupted)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        if server.server_process is not None:
            KEEP_ON_INTERRUPT.discard(server.server_process.pid)
        server.stop()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: BaseException) -> bool:
    """Whether `err` is a full disk (or quota): an OSError ENOSPC / EDQUOT in its chain, or named in its message (a
    flow that collects its tasks' failures reports them as text)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return any(f"[Errno {code}]" in str(err) for code in DISK_FULL)


def disk_full_message(err: BaseException, where: str | None) -> str:
    """One line for a command stopped by a full disk: which store, what is kept, what to do; then the details."""
    place = f"the file system holding {where}" if where else "a file system this command writes to"
    return (
        f"no space left on {place}; slices finished before are kept and nothing half-written is marked done: free "
        f"space there and rerun the same command ({err})"
    )


def kill_children(keep: set[int] | frozenset[int] = frozenset()) -> None:
    """SIGKILL every process this one started, and theirs, but those in `keep` (and theirs)."""
    import psutil

    kept = set(keep)
    for pid in keep:
        try:
            kept |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            pass
    for child in psutil.Process().children(recursive=True):
        if child.pid not in kept:
            try:
                child.kill()
            except psutil.Error:
                pass


def stop_worker_restarts() -> None:
    """Tell this process's Dask nannies not to restart their workers (as a cluster's own shutdown does), so workers
    killed on a Ctrl-C stay dead while the cluster closes."""
    nanny = sys.modules.get("distributed.nanny")
    for each in list(getattr(getattr(nanny, "Nanny", None), "_instances", ())):
        each.loop.add_callback(each.close_gracefully)


def resource_tracker_pid() -> int | None:
    """multiprocessing's resource-tracker process, if this process started one (it exits by itself with us)."""
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)  # private: multiprocessing has no accessor


class InterruptHandler:
    """SIGINT handling while a command runs (a `with` block; the previous handler is restored after it).

    The first SIGINT kills the children but the Prefect server (a Dask worker busy with a task would otherwise keep
    the cluster from closing until the task ends), silences logging (Prefect's "Crash detected!", Dask's closing
    chatter: the command's own line is the one that counts) and raises KeyboardInterrupt in the main thread. The
    command then closes its flow run, cluster and server and calls `report()`; at interpreter exit the process
    leaves with status 130 without the seconds of module teardown. If closing takes longer than `grace_s`, or a
    second SIGINT comes, the children are killed and the process exits at once. `message` is printed once."""

    def __init__(self, message: str, grace_s: float = INTERRUPT_GRACE_S):
        self.message = message
        self.grace_s = grace_s
        self.interrupted = threading.Event()
        self._lock = threading.Lock()
        self._reported = False
        self._previous: Any = None

    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        """Restore the previous handler; after a SIGINT, any error leaving the block ends the command as the interrupt
        does (code that catches the KeyboardInterrupt may raise its own error instead: a C extension's import, cut
        short, raises ImportError)."""
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous)
        if self.interrupted.is_set() and isinstance(error, Exception):
            self.exit_now()

    def report(self) -> None:
        """Print the message (once per command, whoever asks first)."""
        with self._lock:
            if not self._reported:
                self._reported = True
                print(self.message, file=sys.stderr, flush=True)

    def exit_now(self) -> None:
        """Print the message, kill the children and end the process at once with status 130."""
        self.report()
        kill_children()
        os._exit(INTERRUPT_EXIT_STATUS)

    def _exit_at_interpreter_exit(self) -> None:
        """Runs first at exit (atexit is last in, first out): what the command had open is closed by now."""
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        self.exit_now()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted.is_set():
            self.exit_now()
        self.interrupted.set()
        logging.disable(logging.CRITICAL)
        # Dask workers: their tasks' results would be dropped anyway (a task writes its data before its status)
        stop_worker_restarts()
        kill_children(keep={*KEEP_ON_INTERRUPT, resource_tracker_pid() or 0})
        timer = threading.Timer(self.grace_s, self.exit_now)
        timer.daemon = True
        timer.start()
        atexit.register(self._exit_at_interpreter_exit)
        raise KeyboardInterrupt
