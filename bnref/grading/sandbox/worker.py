"""The worker: runs one learner's notebook code inside the sandbox and answers calls.

It is started by the trusted grader (:mod:`bnref.grading.sandbox.session`) as::

    python -I -S worker.py

inside bubblewrap, where it sees the Python standard library, NumPy, this file and
``wire.py``, and nothing else (no bnref, no course files). It reads framed requests
(:mod:`wire`) on stdin and writes framed replies on the file descriptor that was stdout
when it started; fds 1 and 2 then point at the grader's log pipe, so whatever the learner's
code prints cannot mix with the replies.

Requests:

- ``{"op": "exec", "cells": [source, ...]}``: run each cell (plain Python; the grader has
  already turned IPython syntax into calls of ``get_ipython()``) in one namespace, and
  reply ``{"op": "cell", ...}`` after each one, then ``{"op": "ready"}``;
- ``{"op": "call", "steps": [...]}``: call the learner's functions on the inputs given
  (``wire.Ref`` picks a value returned by an earlier step of the same request), reply
  with what each call returned and the state of its array arguments afterwards;
- ``{"op": "bye"}``: exit.

Nothing here is trusted: the learner's code runs in this process and may replace any of
it. The grader only believes the *values* that come back, decoded by :func:`wire.decode`.
"""
import builtins
import io
import linecache
import os
import sys
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire  # noqa: E402

OUTPUT_LIMIT = int(os.environ.get("BNREF_OUTPUT_LIMIT", "20000"))   # characters kept per cell


class CappedText(io.TextIOBase):
    """A text stream that keeps the first ``OUTPUT_LIMIT`` characters written to it."""

    def __init__(self):
        self.parts, self.size, self.dropped = [], 0, False

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        room = OUTPUT_LIMIT - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(len(s), room)
        if len(s) > room:
            self.dropped = True
        return len(s)

    def text(self):
        return "".join(self.parts) + ("\n[... output cut by the grader ...]\n" if self.dropped else "")


class _Shell:
    """Stands in for IPython's shell: magics and shell commands do nothing when graded."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _describe(exc, filename_prefix="<cell"):
    """A learner's exception as plain text: type, message, and the lines in their own code.

    Same form as :func:`bnref.grading.exercise._local_error` gives in the learner's kernel.
    """
    lines = []
    for fs in traceback.extract_tb(exc.__traceback__):
        if fs.filename.startswith(filename_prefix):
            lines.append(f"line {fs.lineno}, in {fs.name}: {fs.line or ''}".rstrip(": "))
    try:
        message = str(exc)
    except Exception:   # noqa: BLE001 - a hostile __str__
        message = "(the exception's message could not be read)"
    return {"type": type(exc).__name__, "message": message[:2000], "where": lines[-5:]}


class Worker:
    def __init__(self, inp, out):
        self.inp, self.out = inp, out
        self.namespace = {"__name__": "__main__", "__builtins__": builtins,
                          "get_ipython": _Shell, "display": print}

    # -- framing
    def read_exact(self, n):
        chunks = []
        while n:
            b = os.read(self.inp, min(n, 1 << 20))
            if not b:
                break
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def send(self, value):
        data = wire.pack(wire.encode(value))
        while data:
            data = data[os.write(self.out, data):]

    # -- running learner code with its output captured
    def captured(self, run):
        out = CappedText()
        saved = sys.stdout, sys.stderr, warnings.showwarning
        sys.stdout = sys.stderr = out
        # warnings print to the captured stream (never to a real stderr)
        warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: out.write(
            warnings.formatwarning(msg, cat, fn, ln, line))
        try:
            error = None
            try:
                value = run()
            except BaseException as e:   # noqa: BLE001 - SystemExit, KeyboardInterrupt too
                value, error = None, _describe(e)
        finally:
            sys.stdout, sys.stderr, warnings.showwarning = saved
        return value, error, out.text()

    def exec_cells(self, cells):
        for i, src in enumerate(cells):
            name = f"<cell {i + 1}>"
            # so that tracebacks can quote the learner's lines, as IPython does
            linecache.cache[name] = (len(src), None, src.splitlines(True), name)

            def run(src=src, name=name):
                exec(compile(src, name, "exec"), self.namespace)
            _, error, text = self.captured(run)
            self.send({"op": "cell", "index": i, "stdout": text, "error": error})
        self.send({"op": "ready"})

    def call(self, steps):
        results, replies = [], []

        def resolve(a):
            if type(a) is not wire.Ref:
                return a
            if not (type(a.step) is int and 0 <= a.step < len(results)):
                raise wire.WireError("bad reference")
            return results[a.step] if a.index is None else results[a.step][a.index]

        for i, step in enumerate(steps):
            self.send({"op": "step", "index": i})     # so the grader knows which call hangs
            fn = self.namespace.get(step["fn"])
            if not callable(fn):
                replies.append({"error": {"type": "NameError", "where": [],
                                          "message": f"name {step['fn']!r} is not defined"}})
                break
            try:
                args = [resolve(a) for a in step["args"]]
                kwargs = {k: resolve(v) for k, v in step["kwargs"].items()}
            except (IndexError, KeyError, TypeError, wire.WireError) as e:
                replies.append({"error": {"type": "ReturnValueError", "where": [],
                                          "message": f"{type(e).__name__}: {e}"}})
                break
            value, error, text = self.captured(lambda: fn(*args, **kwargs))
            if error:
                replies.append({"error": error, "stdout": text})
                break
            results.append(value)
            replies.append({"value": value, "args": [args[i] for i in step.get("watch", [])],
                            "stdout": text})
        self.send({"op": "result", "steps": replies})

    def serve(self):
        while True:
            body = wire.unpack(self.read_exact, 1 << 30)
            if body is None:
                return
            # every array argument is decoded afresh here, so each call gets its own copies
            req = wire.decode(body, refs=wire.Ref)
            if req["op"] == "exec":
                self.exec_cells(req["cells"])
            elif req["op"] == "call":
                self.call(req["steps"])
            elif req["op"] == "bye":
                return


def main():
    proto_out = os.dup(1)
    os.dup2(2, 1)     # the learner's fd-level prints go to the grader's log pipe, not the replies
    worker = Worker(0, proto_out)
    worker.send({"op": "hello"})          # before any learner code: the sandbox works
    worker.serve()


if __name__ == "__main__":
    main()
