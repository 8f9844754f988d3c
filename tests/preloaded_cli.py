"""``python -m ominix ARGS`` in a fresh process without paying for ``import torch`` each time.

A server process imports torch once and forks for every command. The forked child resets what a
new interpreter would have fresh (environment, working directory, seeds, signal dispositions,
standard streams) and runs ``ominix`` as ``python -m`` does, so the test sees a real process with
its own exit code, output and children. Only torch is preloaded: the modules that read environment
variables at import (huggingface_hub, transformers, datasets, rich consoles) are imported in the
child, under the environment the test gave it.

Tests about the interpreter itself (what ``--help`` imports, warnings raised at import time) start
a real ``python -m ominix`` instead (``run_cli(..., fresh=True)``).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_server: subprocess.Popen | None = None
_socket_path: Path | None = None
_lock = threading.Lock()


# --- client (the test process) ------------------------------------------------------------------


def _start() -> Path:
    global _server, _socket_path
    root = Path(tempfile.mkdtemp(prefix="ominix-preloaded-"))
    path = root / "cli.sock"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # each child sets its own
    _server = subprocess.Popen([sys.executable, "-m", "tests.preloaded_cli", str(path)], env=env,
                               cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, text=True)
    ready = _server.stdout.readline()  # the server prints one line once it listens
    if ready.strip() != "ready":
        raise RuntimeError(f"the preloaded ominix server did not start: {ready!r}")
    atexit.register(_stop)
    _socket_path = path
    return path


def _stop() -> None:
    if _server is not None and _server.poll() is None:
        _server.terminate()
        _server.wait()


def _connect() -> socket.socket:
    with _lock:
        path = _socket_path if _server is not None and _server.poll() is None else _start()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(path))
    return conn


def run(argv: list[str], cwd: Path | None, env: dict[str, str],
        timeout: float) -> subprocess.CompletedProcess[str]:
    """What ``subprocess.run([python, -m, ominix, *argv], text=True, capture_output=True)`` returns."""
    with tempfile.TemporaryDirectory(prefix="ominix-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        request = {"argv": argv, "cwd": str(cwd or Path.cwd()), "env": env, "stdout": str(out),
                   "stderr": str(err)}
        with _connect() as conn, conn.makefile("rw") as stream:
            stream.write(json.dumps(request) + "\n")
            stream.flush()
            pid = int(stream.readline())
            conn.settimeout(timeout)
            try:
                status = stream.readline()
            except (TimeoutError, socket.timeout):
                os.killpg(pid, signal.SIGKILL)  # the command and everything it started
                raise subprocess.TimeoutExpired([sys.executable, "-m", "ominix", *argv], timeout,
                                                out.read_text(errors="replace"), err.read_text(errors="replace"))
        if not status:
            raise RuntimeError("the preloaded ominix server went away during a command")
        return subprocess.CompletedProcess([sys.executable, "-m", "ominix", *argv], int(status),
                                           out.read_text(), err.read_text())


# --- server -------------------------------------------------------------------------------------


def _command(request: dict) -> None:
    """In the forked child: become what ``python -m ominix`` starts as, then run it."""
    import random
    import runpy

    import torch

    os.setsid()  # its own process group: a timeout kills it and whatever it started
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    threads = request["env"].get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # the server started without it: torch's default otherwise
        torch.set_num_threads(int(threads))
    random.seed()  # a new interpreter's seeds, not the server's
    torch.seed()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.close(null)
    if request["env"].get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)
    sys.argv = [str(Path(__file__).resolve().parent.parent / "ominix" / "__main__.py"), *request["argv"]]
    sys.path[0] = request["cwd"]  # `python -m` puts the working directory first
    try:
        runpy.run_module("ominix", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        code = -1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _shut_down(code)


def _exit_code(code: object) -> int:
    """What the interpreter makes of ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _shut_down(code: int) -> None:
    """The interpreter's exit, less tearing down every module: with torch imported that costs ~1 s
    of CPU, which a command that never imports torch would not pay in a new interpreter."""
    threading._shutdown()  # noqa: SLF001 (what Py_Finalize does first: join non-daemon threads)
    atexit._run_exitfuncs()  # noqa: SLF001
    gc.collect()  # unreachable files are closed, and so flushed
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if code == -1:  # an uncaught Ctrl-C ends the interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def _reap(*_: object) -> None:
    """Wait for every finished watcher: their CPU time (and their command's) then counts in the
    server's, and so in the test session's ``time`` figures."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _serve(path: str) -> dict | None:
    """Accept requests; returns the request in a command's child, never in the server."""
    import torch  # noqa: F401 (the preload: every child starts with it imported)

    signal.signal(signal.SIGCHLD, _reap)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            return _watch(conn)
        conn.close()


def _watch(conn: socket.socket) -> dict | None:
    """One request: fork the command, tell the client its pid, then its exit status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with conn.makefile("rw") as stream:
        request = json.loads(stream.readline())
        pid = os.fork()
        if pid == 0:
            conn.close()
            return request
        try:
            stream.write(f"{pid}\n")
            stream.flush()
            _, status = os.waitpid(pid, 0)
            stream.write(f"{os.waitstatus_to_exitcode(status)}\n")
            stream.flush()
        finally:  # a client that timed out has gone: nothing to tell it
            os._exit(0)


if __name__ == "__main__":
    _command(_serve(sys.argv[1]))
