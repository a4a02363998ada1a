"""``tandem serve --processes N``: N server processes on one port, started and supervised by a parent.

One Python process computes one request at a time per core at best (the GIL); N processes use N
cores. The parent runs no server: it starts N children with its own command line (so the
children read the same flags, config file and environment) plus :data:`MEMBER_ENV`, which
makes each one a member of the group. Each child:

- binds the shared ``--port`` with ``SO_REUSEPORT`` (the kernel spreads new connections over the
  listening processes; a gRPC channel is one connection, so one client channel always talks to
  one process), and a private port of its own (an ephemeral one) on which only it answers;
- serves its metrics on ``--metrics-port + index`` (0: an ephemeral port each);
- appends to the shared event log and follows what the others append
  (:mod:`tandem.server.log_tailer`);
- reports ready to the parent on a socket (its pid, private port, metrics port, bundle), and
  says SERVING on its health service only once the parent tells it that every child is ready.
  When the parent's socket closes (the parent died), the child stops itself.

The parent forwards SIGTERM and SIGINT to the children (each drains like a single server) and
exits 0 once they have stopped. A child that exits before the group was first ready fails the
group (exit 2, the others are stopped: a bad bundle or setting would fail every restart too). A
child that exits later is logged (pid, exit code or signal) and restarted after a backoff
(:data:`RESTART_BACKOFF_S`, reset once it has served :data:`STEADY_S`); the others serve
meanwhile and keep saying SERVING. More than :data:`MAX_RESTARTS` restarts within
:data:`RESTART_WINDOW_S` stop the group with exit status 1, for a supervisor above (systemd,
Kubernetes) to act on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tandem.server.logs import log_fields

if TYPE_CHECKING:
    from tandem.server.service import ServerConfig

__all__ = ["GroupMember", "MAX_RESTARTS", "MEMBER_ENV", "RESTART_BACKOFF_S", "RESTART_WINDOW_S", "STEADY_S",
           "supervise"]

log = logging.getLogger("tandem.server.group")

#: set by the parent in each child's environment: ``INDEX:PORT:FD`` (FD: the child's end of its socket)
MEMBER_ENV = "TANDEM_GROUP_MEMBER"
#: seconds before the 1st, 2nd, ... restart of a child that exited (the last one repeats)
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: a child that served this long gets its backoff reset
STEADY_S = 60.0
#: more restarts than this within RESTART_WINDOW_S seconds stop the group (exit status 1)
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
_POLL_S = 0.1


@dataclass(frozen=True)
class GroupMember:
    """What a child of the group knows of its place in it (from :data:`MEMBER_ENV`)."""

    index: int
    port: int
    fd: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> GroupMember | None:
        raw = (os.environ if environ is None else environ).get(MEMBER_ENV)
        if not raw:
            return None
        try:
            index, port, fd = (int(part) for part in raw.split(":"))
        except ValueError:
            raise ValueError(f"{MEMBER_ENV} must be INDEX:PORT:FD (set by tandem serve --processes), "
                             f"got {raw!r}") from None
        return cls(index, port, fd)

    def config(self, config: ServerConfig) -> ServerConfig:
        """The group's settings as this child serves them: the group's port, metrics on port + index."""
        metrics = config.metrics_port
        if metrics:
            metrics += self.index
        return dataclasses.replace(config, port=self.port, metrics_port=metrics)

    def report_ready(self, **fields: object) -> None:
        """Tell the parent this child serves (one JSON line on the socket)."""
        sock = socket.socket(fileno=os.dup(self.fd))
        try:
            sock.sendall((json.dumps({"ready": True, **fields}) + "\n").encode())
        finally:
            sock.close()

    def listen(self, on_group_serving: Callable[[], None], on_parent_gone: Callable[[], None]) -> None:
        """In a daemon thread: call ``on_group_serving`` when the parent says every child is ready,
        ``on_parent_gone`` when its socket closes."""

        def loop() -> None:
            sock = socket.socket(fileno=os.dup(self.fd))
            buf = b""
            try:
                while True:
                    data = sock.recv(4096)
                    if not data:
                        break
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip() == b"serving":
                            on_group_serving()
            except OSError:
                pass
            finally:
                sock.close()
            log_fields(log, logging.WARNING, "the group's parent process is gone; stopping", index=self.index)
            on_parent_gone()

        threading.Thread(target=loop, name="group-member", daemon=True).start()


class _Child:
    """One started child: its process, the parent's end of its socket, what it reported."""

    def __init__(self, index: int, port: int, command: Sequence[str], environ: Mapping[str, str]) -> None:
        self.index = index
        parent_end, child_end = socket.socketpair()
        try:
            env = {**environ, MEMBER_ENV: f"{index}:{port}:{child_end.fileno()}"}
            self.proc = subprocess.Popen(list(command), env=env, pass_fds=(child_end.fileno(),))
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        parent_end.setblocking(False)
        self.sock = parent_end
        self.started = time.monotonic()
        self.ready: dict | None = None
        self.told_serving = False
        self._buf = b""

    def read(self) -> list[dict]:
        """The messages that arrived (non-blocking)."""
        out = []
        try:
            while data := self.sock.recv(65536):
                self._buf += data
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return out
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("process %d sent an unreadable line: %r", self.index, line[:200])
        return out

    def tell_serving(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"serving\n")
            self.sock.setblocking(False)
            self.told_serving = True
        except OSError:  # it died meanwhile: the supervisor loop sees that
            pass

    def close(self) -> None:
        self.sock.close()


def _exit_text(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def supervise(config: ServerConfig, command: Sequence[str] | None = None,
              environ: Mapping[str, str] | None = None) -> int:
    """Run ``config.processes`` children of ``command`` (default: this process's own command line)
    until SIGTERM or SIGINT; returns the exit status (see the module docstring)."""
    n = config.processes
    command = list(command) if command is not None else [sys.executable, *sys.orig_argv[1:]]
    environ = dict(os.environ if environ is None else environ)
    # with port 0 every child must still bind the same port: pick it here (a free one, released)
    port = config.port or _free_port(config.host)
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children: list[_Child | None] = [_Child(i, port, command, environ) for i in range(n)]
    due: dict[int, float] = {}  # index -> monotonic time of its restart
    failures: list[int] = [0] * n  # consecutive early exits per index (the backoff step)
    restarts: deque[float] = deque()
    group_ready = False
    log_fields(log, logging.INFO, "starting processes", processes=n, address=f"{config.host}:{port}",
               pids=[c.proc.pid for c in children if c is not None])
    try:
        while not stop.is_set():
            socks = [c.sock for c in children if c is not None]
            if socks:
                select.select(socks, [], [], _POLL_S)
            else:
                stop.wait(_POLL_S)
            if stop.is_set():  # a Ctrl-C reaches the children too: their exits are not failures
                break
            now = time.monotonic()
            for i, child in enumerate(children):
                if child is None:
                    continue
                for msg in child.read():
                    if msg.get("ready") and child.ready is None:
                        child.ready = msg
                        print(f"tandem process {i} ready: pid {child.proc.pid}, private port {msg.get('private_port')}"
                              + (f", metrics port {msg['metrics_port']}" if msg.get("metrics_port") else ""),
                              flush=True)
                        if group_ready:
                            child.tell_serving()
                code = child.proc.poll()
                if code is None:
                    if child.ready is not None and now - child.started > STEADY_S:
                        failures[i] = 0
                    continue
                child.close()
                children[i] = None
                if not group_ready:
                    print(f"tandem serve: error: process {i} (pid {child.proc.pid}) exited with {_exit_text(code)} "
                          "before the group was ready; see its log above", file=sys.stderr, flush=True)
                    return 2
                restarts.append(now)
                while restarts and now - restarts[0] > RESTART_WINDOW_S:
                    restarts.popleft()
                if len(restarts) > MAX_RESTARTS:
                    log_fields(log, logging.ERROR, "processes keep exiting: stopping the group", index=i,
                               pid=child.proc.pid, exit=_exit_text(code), restarts=len(restarts),
                               window_s=RESTART_WINDOW_S)
                    return 1
                delay = RESTART_BACKOFF_S[min(failures[i], len(RESTART_BACKOFF_S) - 1)]
                failures[i] += 1
                due[i] = now + delay
                log_fields(log, logging.ERROR, "process exited; restarting it", index=i, pid=child.proc.pid,
                           exit=_exit_text(code), restart_in_s=delay)
            for i, when in list(due.items()):
                if now >= when:
                    del due[i]
                    children[i] = _Child(i, port, command, environ)
                    log_fields(log, logging.INFO, "process restarted", index=i, pid=children[i].proc.pid)
            if not group_ready and all(c is not None and c.ready is not None for c in children):
                group_ready = True
                for c in children:
                    c.tell_serving()
                first = children[0].ready
                print(f"tandem serving {first.get('bundle')} on {config.host}:{port} with {n} processes", flush=True)
        return 0
    finally:
        _stop_all([c for c in children if c is not None], config.grace_s + 30.0)


def _stop_all(children: Sequence[_Child], timeout_s: float) -> None:
    """SIGTERM every child (each drains), SIGKILL what is left after ``timeout_s``."""
    for c in children:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for c in children:
        try:
            c.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log_fields(log, logging.ERROR, "process did not stop in time: killed", index=c.index, pid=c.proc.pid)
            c.proc.kill()
            c.proc.wait()
        c.close()
    log_fields(log, logging.INFO, "group stopped", exits=[_exit_text(c.proc.returncode) for c in children])
