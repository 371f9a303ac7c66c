"""The judge: a clean Python process that decides whether a learner's outputs are right.

Started by the notebook kernel as ``python -I -m bnref.grading._judge`` (isolated mode: no
``PYTHONPATH``, no user site, no current directory on ``sys.path``), so nothing the
learner's cells did to their kernel exists here. It reads the request from stdin: a text
header (check, case, per output: dtype format, shape, byte count, or the kernel's error
message) followed by the raw bytes of every output. It rebuilds the case's inputs itself
(:mod:`bnref.grading._cases`), computes the reference with bnref and the known wrong
variants (:mod:`bnref.grading._variants`), compares, and writes ``PASS`` or ``FAIL``, a
newline, and the message for the learner.
"""
import sys
import traceback

import numpy as np

from . import _cases

RTOL64, ATOL64 = 1e-7, 1e-8        # float64: a correct NumPy implementation is ~1e-15 away
RTOL32, ATOL32 = 1e-3, 2e-4        # float32: single-precision rounding


def _unhex(h):
    return bytes.fromhex(h).decode("utf-8") if h else ""


def parse(raw):
    """Header + blobs -> (check, case, nonce, [ {name: ndarray | ("error", msg)} per trial ], notes)."""
    header, sep, data = raw.partition(b"\nEND\n")
    if not sep:
        raise ValueError("malformed request (no END line)")
    lines = header.decode("ascii").split("\n")
    v, check, case, ntrials, nonce = lines[0].split(" ")
    if v != "V1":
        raise ValueError(f"unknown request version {v}")
    trials, notes, pos = [], [], 0
    for line in lines[1:]:
        kind, _, rest = line.partition(" ")
        if kind == "T":
            trials.append({})
        elif kind == "E":
            name, msg = rest.split(" ")
            trials[-1][name] = ("error", _unhex(msg))
        elif kind == "O":
            name, fmt, shape, nbytes, note = (rest.split(" ") + [""])[:5]
            nbytes = int(nbytes)
            shape = () if shape == "-" else tuple(int(s) for s in shape.split(","))
            buf = data[pos:pos + nbytes]
            pos += nbytes
            try:
                dtype = np.dtype(_unhex(fmt))
                arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
            except (TypeError, ValueError):
                trials[-1][name] = ("error", f"{name} has an unsupported dtype (buffer format "
                                             f"{_unhex(fmt)!r}); return a float array")
                continue
            trials[-1][name] = arr
            if note:
                notes.append(_unhex(note))
    if len(trials) != int(ntrials):
        raise ValueError("malformed request (trial count)")
    return check, case, int(nonce), trials, notes


def _tols(dtype):
    return (RTOL32, ATOL32) if dtype == np.float32 else (RTOL64, ATOL64)


def _close(got, ref, tol):
    if not isinstance(got, np.ndarray) or got.shape != np.shape(ref):
        return False
    if got.dtype.kind not in "fiu":
        return False
    with np.errstate(all="ignore"):
        return bool(np.allclose(got.astype(np.float64), ref, rtol=tol[0], atol=tol[1]))


def _describe_inputs(t):
    for k in ("x", "W", "xs"):
        if k in t:
            a = t[k]
            if k == "xs":
                return f"{a.shape[0]} batches of shape {tuple(a.shape[1:])}"
            extra = f", G={t['G']}" if "G" in t else ""
            extra += f", eps={t['eps']}" if "eps" in t else ""
            return f"{k} of shape {tuple(a.shape)} ({a.dtype}{extra})"
    return "the test inputs"


def _mismatch(name, got, ref):
    if not isinstance(got, np.ndarray):
        return f"{name} is not an array"
    if got.shape != ref.shape:
        return f"{name} has shape {got.shape}, expected {ref.shape}"
    if got.dtype.kind not in "fiu":
        return f"{name} has dtype {got.dtype}, expected a float array"
    g = got.astype(np.float64)
    if not np.all(np.isfinite(g)):
        return f"{name} contains NaN or inf (a division by zero, or a square root of a negative number?)"
    diff = np.abs(g - ref)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    return (f"{name} does not match: largest difference {diff[idx]:.3g} at index {tuple(int(i) for i in idx)} "
            f"(expected {ref[idx]:.6g}, got {g[idx]:.6g})")


def judge(check, case, got_trials, nonce=0):
    """Return ``(passed, message)``."""
    from ._variants import REFERENCE, VARIANTS

    compare, tolerate, dtype_case = _cases.spec(check, case)
    trials = _cases.trials(check, case, nonce)
    if not 0 < len(got_trials) <= len(trials):
        return False, "internal grading error: the number of results does not match the test"
    partial = len(got_trials) < len(trials)   # the kernel stopped early; it fails the test anyway
    notes = []
    for t, got in zip(trials, got_trials):
        in_dtype = next(v.dtype for v in t.values() if isinstance(v, np.ndarray))
        tol = _tols(in_dtype)
        where = f"for {_describe_inputs(t)}"
        for name in compare:
            g = got.get(name)
            if isinstance(g, tuple):
                return False, f"{g[1]} ({where})."
        ref = REFERENCE[check](t)
        bad = [n for n in compare if not _close(got[n], ref[n], tol)]
        if not bad:
            if dtype_case and in_dtype == np.float32:
                wrong = [n for n in compare if got[n].dtype != np.float32]
                if wrong:
                    return False, (f"{', '.join(wrong)} is {got[wrong[0]].dtype} for float32 input ({where}): "
                                   "keep the input's dtype (float32 in, float32 out). A float64 array "
                                   "created inside your function (np.array([...]), np.zeros(D)) "
                                   "promotes the result; use x.dtype.")
            continue
        variants = [(vn, fn(t), msg) for vn, fn, msg in VARIANTS[check]]
        matched = [(vn, msg) for vn, out, msg in variants
                   if all(_close(got[n], out[n], tol) for n in compare)]
        tolerated = [(vn, msg) for vn, msg in matched if vn in tolerate]
        if tolerated:
            notes.append(f"Passed. This test checks something else, but note: {tolerated[0][1]}")
            continue
        if matched:
            msg = f"Likely mistake: {matched[0][1]}"
        else:
            parts = []
            for n in bad:
                hit = next((m for vn, out, m in variants if _close(got[n], out[n], tol)), None)
                parts.append(f"{n}: {hit}" if hit else _mismatch(n, got[n], ref[n]) + ".")
            msg = "Likely mistake: " + " ".join(parts) if all(
                any(_close(got[n], out[n], tol) for _, out, _ in variants) for n in bad) \
                else "Wrong result. " + " ".join(parts)
        if "out" in got and "out" not in compare and not _close(got["out"], ref["out"], tol) \
                and isinstance(got["out"], np.ndarray):
            msg += (" Note: the forward pass's output is wrong too; fix the forward pass first "
                    "(its cache feeds the backward pass).")
        return False, f"{msg} ({where})"
    if partial:   # the trials that ran are right; the kernel reports why the next one failed
        return True, ""
    return True, " ".join(dict.fromkeys(notes))


def main():
    raw = sys.stdin.buffer.read()
    try:
        check, case, nonce, got, notes = parse(raw)
        passed, message = judge(check, case, got, nonce)
    except Exception:   # noqa: BLE001 - report, never crash silently
        passed, message = False, ("internal grading error (not your fault; tell your instructor):\n"
                                  + traceback.format_exc(limit=3))
    sys.stdout.buffer.write((b"PASS\n" if passed else b"FAIL\n") + message.encode("utf-8"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
