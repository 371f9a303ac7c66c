"""The trusted side of one sandboxed run: start the worker, run the cells, make calls.

A :class:`Session` owns one worker process (in bubblewrap, :mod:`.bwrap`). Every wait has a
deadline enforced here, outside the learner's reach: a cell or a call that does not answer
in time, or a worker that dies (``os._exit``, a crash, the memory limit), ends that worker.
The next call starts a fresh one and runs the cells again, leaving out the cells that hung
or crashed, so one bad cell costs only itself.

Replies are decoded with :func:`.wire.decode` only (plain values, bounded sizes).
"""
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from . import bwrap, wire

__all__ = ["CellReport", "Failure", "Session", "SessionConfig"]


@dataclass(frozen=True)
class SessionConfig:
    sandbox: str = "bwrap"              # "bwrap", or "none" for trusted submissions
    limits: bwrap.Limits = bwrap.Limits()
    cell_timeout: float = 30.0          # seconds for one cell of the learner's code
    call_timeout: float = 10.0          # seconds for one check's calls
    output_limit: int = 20000           # characters of printed output kept per cell
    max_reply_bytes: int = 64 << 20
    max_restarts: int = 10
    jobs: int = 1                       # sandboxes running at once (for the process limit)


@dataclass
class CellReport:
    """What one learner cell did: its printed text, and an error if it raised or was stopped."""

    index: int
    stdout: str = ""
    error: dict = None          # {"type", "message", "where"} (the learner's exception), or
    status: str = "ok"          # "ok" | "error" | "timeout" | "crash" | "skipped"


@dataclass
class Failure:
    """A call that produced no result: ``kind`` is "timeout", "crash" or "protocol"."""

    kind: str
    detail: str = ""
    step: int = -1              # the call that was running (-1: unknown)


class _Dead(Exception):
    def __init__(self, kind, detail=""):
        super().__init__(kind)
        self.kind, self.detail = kind, detail


@dataclass
class Session:
    cells: list                              # plain-Python sources of the learner's cells
    config: SessionConfig = SessionConfig()
    reports: list = field(default_factory=list)
    restarts: int = 0

    def __post_init__(self):
        self._proc = None
        self._buf = b""
        self._log = bytearray()
        self._skip = set()          # cells that hung or crashed the worker: never run again
        self._scratch = None

    # ---------------------------------------------------------------- process
    def _spawn(self):
        if self.config.sandbox == "none":
            self._scratch = tempfile.mkdtemp(prefix="bnref-grade-")
            argv, env = bwrap.plain_command(self._scratch, self.config.limits,
                                            self.config.output_limit, self.config.jobs)
            cwd = self._scratch
        elif self.config.sandbox == "bwrap":
            argv, env = bwrap.sandbox_command(self.config.limits, self.config.output_limit,
                                              self.config.jobs)
            cwd = "/"
        else:
            raise ValueError(f"sandbox must be 'bwrap' or 'none', got {self.config.sandbox!r}")
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env, cwd=cwd,
                                      start_new_session=True)
        self._buf = b""
        self._log = bytearray()
        threading.Thread(target=self._drain, args=(self._proc.stderr, self._log), daemon=True).start()

    @staticmethod
    def _drain(stream, log, keep=16384):
        """Read the worker's stray output (fd-level prints, bwrap's errors); keep the start."""
        try:
            while True:
                b = stream.read1(65536)
                if not b:
                    return
                if len(log) < keep:
                    log.extend(b[:keep - len(log)])
        except (OSError, ValueError):
            return

    def log_text(self):
        return bytes(self._log).decode("utf-8", "replace")

    def _kill(self):
        p, self._proc = self._proc, None
        if p is None:
            return
        try:
            os.killpg(p.pid, 9)       # bwrap and, with it, the sandbox's whole PID namespace
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.kill()
        except ProcessLookupError:
            pass
        p.wait()
        for s in (p.stdin, p.stdout, p.stderr):
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        if self._proc is not None:
            try:
                self._send({"op": "bye"})
                self._proc.wait(timeout=2)
            except (_Dead, subprocess.TimeoutExpired, OSError):
                pass
            self._kill()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- messages
    def _send(self, value):
        try:
            self._proc.stdin.write(wire.pack(wire.encode(value)))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise _Dead("crash") from None

    def _recv(self, deadline):
        fd = self._proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                if len(self._buf) >= 8:
                    n = int.from_bytes(self._buf[:8], "little")
                    if n > self.config.max_reply_bytes:
                        raise _Dead("protocol", f"a reply of {n} bytes is over the limit")
                    if len(self._buf) >= 8 + n:
                        body, self._buf = self._buf[8:8 + n], self._buf[8 + n:]
                        try:
                            return wire.decode(body, max_bytes=self.config.max_reply_bytes)
                        except wire.WireError as e:
                            raise _Dead("protocol", str(e)) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Dead("timeout")
                if not sel.select(left):
                    raise _Dead("timeout")
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise _Dead("crash")
                self._buf += chunk

    # ---------------------------------------------------------------- cells
    def _hello(self):
        """The worker greets before any learner code runs; without it the sandbox is broken."""
        try:
            rep = self._recv(time.monotonic() + max(30.0, self.config.cell_timeout))
            if type(rep) is dict and rep.get("op") == "hello":
                return
            why = "unexpected first reply"
        except _Dead as dead:
            why = dead.kind
        self._kill()
        log = self.log_text().strip()
        raise bwrap.SandboxUnavailable(f"the grading sandbox did not start ({why}): {log[-2000:]}")

    def start(self):
        """Start the worker and run the learner's cells (again, after a restart)."""
        first = not self.reports
        self._spawn()
        self._hello()
        todo = [i for i in range(len(self.cells)) if i not in self._skip]
        try:
            self._send({"op": "exec", "cells": [self.cells[i] for i in todo]})
        except _Dead:
            todo = []
        for i in todo:
            try:
                rep = self._recv(time.monotonic() + self.config.cell_timeout)
                if type(rep) is not dict or rep.get("op") != "cell":
                    raise _Dead("protocol", "unexpected reply")
            except _Dead as dead:
                self._skip.add(i)
                if first or i >= len(self.reports):
                    self._record(CellReport(i, status=dead.kind, error=_stopped(dead, self.config)))
                self._kill()
                return self._restart()
            if first or i >= len(self.reports):
                err = rep.get("error")
                self._record(CellReport(i, stdout=str(rep.get("stdout", "")),
                                        error=err if type(err) is dict else None,
                                        status="error" if err else "ok"))
        try:
            rep = self._recv(time.monotonic() + self.config.cell_timeout)
            if type(rep) is not dict or rep.get("op") != "ready":
                raise _Dead("protocol", "unexpected reply")
        except _Dead:
            self._kill()
            return self._restart()
        for i in range(len(self.reports), len(self.cells)):      # cells never reached
            self._record(CellReport(i, status="skipped"))
        return True

    def _record(self, report):
        while len(self.reports) < report.index:
            self.reports.append(CellReport(len(self.reports), status="skipped"))
        if report.index < len(self.reports):
            self.reports[report.index] = report
        else:
            self.reports.append(report)

    def _restart(self):
        self.restarts += 1
        if self.restarts > self.config.max_restarts:
            return False
        return self.start()

    # ---------------------------------------------------------------- calls
    def call(self, steps, timeout=None):
        """Run ``steps`` (see :mod:`.worker`); their replies, or a :class:`Failure`."""
        if self._proc is None and not self._restart():
            return Failure("crash", "the grader stopped restarting this notebook's code "
                                    f"after {self.config.max_restarts} restarts")
        deadline = time.monotonic() + (self.config.call_timeout if timeout is None else timeout)
        running = -1
        try:
            self._send({"op": "call", "steps": steps})
            while True:
                rep = self._recv(deadline)
                if type(rep) is dict and rep.get("op") == "step" and type(rep.get("index")) is int:
                    running = rep["index"]           # the worker says which call it is in
                    continue
                if type(rep) is not dict or rep.get("op") != "result" or type(rep.get("steps")) is not list:
                    raise _Dead("protocol", "unexpected reply")
                return rep["steps"]
        except _Dead as dead:
            self._kill()
            return Failure(dead.kind, dead.detail, running)


def _stopped(dead, config):
    if dead.kind == "timeout":
        msg = (f"this cell did not finish within {config.cell_timeout:g} s, so the grader stopped it "
               "(an infinite loop?) and ran the rest of the notebook without it")
    elif dead.kind == "crash":
        msg = ("this cell ended the Python process (os._exit, a crash, or over the "
               f"{config.limits.memory_mb} MB memory limit); the grader ran the rest without it")
    else:
        msg = f"the grader could not read this cell's result ({dead.detail}); it ran the rest without it"
    return {"type": {"timeout": "TimeoutError", "crash": "WorkerDied"}.get(dead.kind, "GradingError"),
            "message": msg, "where": []}
