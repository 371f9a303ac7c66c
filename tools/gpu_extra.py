"""Extra GPU checks and micro-benchmarks for bnref's CuPy kernels (a verification tool kept beside the project, not part of bnref).

    python3 tools/gpu_extra.py checks   OUT.json [SUMMARY.txt]   correctness beyond tests/test_gpu_kernels.py
    python3 tools/gpu_extra.py micro    OUT.json [SUMMARY.txt]   API latency vs device time, per kernel, vs PyTorch
    python3 tools/gpu_extra.py sanitize                          tiny run of every kernel (for compute-sanitizer)
    python3 tools/gpu_extra.py ncu                               a profiled range of the main kernels (for ncu)

Run from the repository root (bnref importable). Every check and measurement is wrapped: a failure is
recorded with its message and the script goes on; the JSON file is rewritten after every item, so a
timeout keeps what was done. The micro-benchmarks never change clocks or any device setting.
"""
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np

RESULTS = {"items": []}
OUT_JSON = None
SUMMARY = None
EPS = 1e-5
TOL = {"float64": 1e-9, "float32": 2e-5, "float16": 1e-2, "bfloat16": 1e-2}


def _save():
    if OUT_JSON:
        with open(OUT_JSON, "w") as f:
            f.write(json.dumps(RESULTS, indent=1, default=str))


def _summary(line):
    print(line, flush=True)
    if SUMMARY:
        with open(SUMMARY, "a") as f:
            f.write(line + "\n")


def _bf16():
    try:
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    except Exception:
        return None


def _dtype(name):
    return _bf16() if name == "bfloat16" else np.dtype(name)


def _cp():
    import cupy as cp
    return cp


def _torch():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


def _device_name(cp):
    """The current device's name (CuPy's device properties give bytes or str, by version)."""
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else name


def _host64(cp, a):
    if a.dtype.itemsize < 4:
        a = a.astype(cp.float32)
    return cp.asnumpy(a).astype(np.float64)


def _rand(cp, shape, dtype, seed, loc=0.0, scale=1.0):
    """Random values made on the GPU in float32 (float64 for float64), then cast to dtype."""
    rng = cp.random.default_rng(seed)
    base = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    a = rng.standard_normal(shape, dtype=base)
    if scale != 1.0:
        a *= scale
    if loc:
        a += loc
    return a.astype(dtype) if np.dtype(dtype) != np.dtype(base) else a


# bnref.kernels.cupy_bn internals this tool reads (they change: every use is guarded, and what is
# missing is printed once, at the start of checks and micro, instead of failing a check).
PRIVATE = ("_plan", "_bn_statistics", "_kernel", "NAME_EXPRESSIONS", "module_source")


def _private_report():
    from bnref.kernels import cupy_bn
    have = [n for n in PRIVATE if hasattr(cupy_bn, n)]
    missing = [n for n in PRIVATE if not hasattr(cupy_bn, n)]
    RESULTS["cupy_bn_private"] = {"present": have, "missing": missing}
    _summary(f"cupy_bn internals read by this tool: present {', '.join(have) or '-'}; "
             f"missing {', '.join(missing) or 'none'}")


def _plan_info(x3, *others):
    """The planner's (layout, vector width, grid, block, partials) for x3 as a dict, read from
    cupy_bn._plan; {"missing": why} when it is gone or changed shape."""
    from bnref.kernels import cupy_bn
    plan = getattr(cupy_bn, "_plan", None)
    if plan is None:
        return {"missing": "cupy_bn._plan not found"}
    try:
        p = plan(x3, *others)
    except (TypeError, AttributeError) as exc:
        return {"missing": f"planner call failed ({type(exc).__name__}: {str(exc)[:80]})"}
    if isinstance(p, tuple) and len(p) == 6 and p[0] in ("rows", "cols"):
        layout, _, vec, grid, block, parts = p
        return {"layout": layout, "vec": int(vec), "grid": list(grid), "block": list(block),
                "partials": int(parts)}
    return {"missing": f"planner returned an unexpected {type(p).__name__}: {str(p)[:80]}"}


def _rel(got, want, scale=0.0):
    if got.shape != want.shape:
        return float("inf")
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))) if want.size else 0.0,
                                                  scale, 1e-30))


# ------------------------------------------------------------------------------------ checks

def _record(name, fn):
    t0 = time.time()
    item = {"name": name}
    try:
        res = fn() or {}
        item.update(res)
        item.setdefault("ok", True)
    except Exception as exc:  # noqa: BLE001
        item["ok"] = False
        item["error"] = f"{type(exc).__name__}: {exc}"
        item["trace"] = traceback.format_exc()[-2000:]
    item["seconds"] = round(time.time() - t0, 2)
    RESULTS["items"].append(item)
    _save()
    status = "SKIP" if item.get("skipped") else ("PASS" if item["ok"] else "FAIL")
    detail = item.get("error") or item.get("detail") or ""
    _summary(f"  {status:4s} {name:52s} {item.get('max_err', ''):>10} {detail}"[:240])
    return item


def _compare_bn(cp, x, dy, gamma, beta, axis, dtype_name):
    """bnref on the GPU (public API) against bnref's CPU kernels in float64 on the same values."""
    import bnref
    y, cache = bnref.batchnorm_forward(x, gamma, beta, EPS, axis=axis)
    dx, dg, db = bnref.batchnorm_backward(dy, cache)
    cp.cuda.Device().synchronize()                      # surface asynchronous launch errors here
    x64, dy64 = _host64(cp, x), _host64(cp, dy)
    g64, b64 = _host64(cp, gamma), _host64(cp, beta)
    y_r, c_r = bnref.batchnorm_forward(x64, g64, b64, EPS, axis=axis)
    dx_r, dg_r, db_r = bnref.batchnorm_backward(dy64, c_r)
    ax = axis % x64.ndim
    red = tuple(i for i in range(x64.ndim) if i != ax)
    shape = [1] * x64.ndim
    shape[ax] = -1
    x_hat = (x64 - c_r.mean.reshape(shape)) * c_r.inv_std.reshape(shape)
    errs = {
        "y": _rel(_host64(cp, y), y_r),
        "mean": _rel(_host64(cp, cache.mean), c_r.mean, np.abs(x64).mean(axis=red).max()),
        "var": _rel(_host64(cp, cache.var), c_r.var),
        "dx": _rel(_host64(cp, dx), dx_r, np.max(np.abs(g64 * c_r.inv_std)) * np.max(np.abs(dy64))),
        "dgamma": _rel(_host64(cp, dg), dg_r, np.abs(dy64 * x_hat).sum(axis=red).max()),
        "dbeta": _rel(_host64(cp, db), db_r, np.abs(dy64).sum(axis=red).max()),
    }
    worst = max(errs.values())
    tol = TOL[dtype_name]
    types_ok = (y.dtype == x.dtype and dx.dtype == x.dtype and y.shape == x.shape
                and isinstance(y, cp.ndarray))
    return {"ok": bool(worst <= tol and types_ok), "max_err": f"{worst:.2e}", "errs": errs, "tol": tol,
            "detail": "" if types_ok else f"dtype/shape y {y.dtype}{y.shape} dx {dx.dtype}"}


def _params(cp, C, stat, seed):
    rng = np.random.default_rng(seed)
    return (cp.asarray(rng.uniform(0.5, 1.5, C).astype(stat)),
            cp.asarray(rng.standard_normal(C).astype(stat)))


def _bn_case(shape, dtype_name, axis=1, loc=0.5, scale=2.0, seed=0):
    def run():
        cp = _cp()
        dt = _dtype(dtype_name)
        if dt is None:
            return {"ok": True, "skipped": True, "detail": "ml_dtypes missing"}
        try:
            x = _rand(cp, shape, dt, seed, loc, scale)
        except Exception as exc:  # bfloat16 unsupported by this CuPy
            return {"ok": True, "skipped": True, "detail": f"cannot make {dtype_name}: {exc}"}
        dy = _rand(cp, shape, dt, seed + 1)
        from bnref.kernels import stat_dtype
        C = shape[axis]
        g, b = _params(cp, C, stat_dtype(dt), seed)
        ax = axis % len(shape)
        x3 = x.reshape(int(np.prod(shape[:ax])), C, int(np.prod(shape[ax + 1:])))
        plan = _plan_info(x3)
        res = _compare_bn(cp, x, dy, g, b, axis, dtype_name)
        res["plan"] = plan
        return res
    return run


def check_misaligned():
    cp = _cp()
    out = {}
    worst = 0.0
    ok = True
    missing = None
    for shape in [(8, 16, 64), (256, 64)]:
        n = int(np.prod(shape))
        bx = _rand(cp, (n + 1,), np.float32, 11, 0.5, 2.0)
        by = _rand(cp, (n + 1,), np.float32, 12)
        x, dy = bx[1:].reshape(shape), by[1:].reshape(shape)
        assert x.flags.c_contiguous and x.data.ptr % 16 != 0
        A, C = shape[0], shape[1]
        B = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        plan = _plan_info(x.reshape(A, C, B))
        g, b = _params(cp, C, np.float32, 3)
        r = _compare_bn(cp, x, dy, g, b, 1, "float32")
        out[str(shape)] = {"plan": plan, **r}
        # the results must be right; the planner's vector width is checked where it can be read
        ok &= r["ok"] and plan.get("vec", 1) == 1
        missing = missing or plan.get("missing")
        worst = max(worst, float(r["max_err"]))
    return {"ok": bool(ok), "max_err": f"{worst:.2e}", "cases": out,
            "detail": "16-byte-misaligned views: right results, VEC=1 kernels"
                      + (f" (width not checked: {missing})" if missing else "")}


def check_noncontiguous():
    cp = _cp()
    res = {}
    worst, ok = 0.0, True
    big = _rand(cp, (4, 8, 12, 10), np.float32, 21, 0.5, 2.0)
    bdy = _rand(cp, (4, 8, 12, 10), np.float32, 22)
    g, b = _params(cp, 8, np.float32, 4)
    r = _compare_bn(cp, big[:, :, ::2], bdy[:, :, ::2], g, b, 1, "float32")
    res["strided"] = r
    ok &= r["ok"]
    worst = max(worst, float(r["max_err"]))
    nhwc = _rand(cp, (4, 6, 10, 8), np.float32, 23, 0.5, 2.0)      # a channels-last tensor seen as NCHW
    dy = _rand(cp, (4, 6, 10, 8), np.float32, 24)
    r = _compare_bn(cp, nhwc.transpose(0, 3, 1, 2), dy.transpose(0, 3, 1, 2), g, b, 1, "float32")
    res["channels_last_view_axis1"] = r
    ok &= r["ok"]
    worst = max(worst, float(r["max_err"]))
    return {"ok": bool(ok), "max_err": f"{worst:.2e}", "cases": res}


def check_stream():
    import bnref
    cp = _cp()
    x = _rand(cp, (32, 64, 28, 28), np.float32, 31, 0.5, 2.0)
    dy = _rand(cp, x.shape, np.float32, 32)
    g, b = _params(cp, 64, np.float32, 5)
    y0, c0 = bnref.batchnorm_forward(x, g, b, EPS)
    r0 = bnref.batchnorm_backward(dy, c0)
    cp.cuda.Device().synchronize()        # a non-blocking stream does not wait for the legacy stream
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y1, c1 = bnref.batchnorm_forward(x, g, b, EPS)
        r1 = bnref.batchnorm_backward(dy, c1)
    s.synchronize()
    same = bool(cp.array_equal(y0, y1)) and all(bool(cp.array_equal(a, b_)) for a, b_ in zip(r0, r1))
    same &= bool(cp.array_equal(c0.mean, c1.mean)) and bool(cp.array_equal(c0.var, c1.var))
    return {"ok": same, "detail": "non-blocking stream gives bit-identical results" if same
            else "results differ between streams"}


def check_determinism():
    """Bitwise repeatability: a moving result means a race (no atomics are used, so it must hold)."""
    import bnref
    cp = _cp()
    out, ok = {}, True
    for shape, axis, dt in [((32, 64, 56, 56), 1, "float32"), ((32, 56, 56, 64), -1, "float32"),
                            ((4096, 1024), 1, "float32"), ((8, 256, 28, 28), 1, "float16"),
                            ((256, 2048, 7, 7), 1, "float32")]:
        d = _dtype(dt)
        x = _rand(cp, shape, d, 41, 0.5, 2.0)
        dy = _rand(cp, shape, d, 42)
        g, b = _params(cp, shape[axis], np.float32, 6)
        ref = None
        diffs = 0
        for _ in range(8):
            y, c = bnref.batchnorm_forward(x, g, b, EPS, axis=axis)
            dx, dg, db = bnref.batchnorm_backward(dy, c)
            cur = (y, c.mean, c.var, c.inv_std, dx, dg, db)
            if ref is None:
                ref = cur
            else:
                diffs += sum(not bool(cp.array_equal(a, b_)) for a, b_ in zip(ref, cur))
        out[f"{shape} {dt}"] = diffs
        ok &= diffs == 0
    return {"ok": bool(ok), "cases": out, "detail": "number of outputs that changed over 8 repeats"}


def _rand_big(cp, shape, dtype, seed, loc=0.0, scale=1.0, chunk=1 << 28):
    """Like _rand, made in chunks of < 2**31 values (CuPy's own kernels then never index past 2**31)."""
    n = int(np.prod(shape))
    flat = cp.empty(n, dtype=dtype)
    rng = cp.random.default_rng(seed)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        a = rng.standard_normal(m, dtype=cp.float32)
        a *= scale
        a += loc
        flat[i:i + m] = a.astype(dtype)
        del a
    return flat.reshape(shape)


def check_large_index():
    """More than 2**31 elements in one tensor (64-bit offsets), both layouts, float16.

    References are per channel (each < 2**31 values), so only bnref's kernels see the whole tensor.
    """
    import bnref
    cp = _cp()
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 40e9:
        return {"ok": True, "skipped": True, "detail": f"only {free / 1e9:.0f} GB free"}
    res, ok, worst = {}, True, 0.0
    for shape, axis in [((2, 8, 2**27 + 64), 1), ((2**27 + 16, 16), 1)]:
        x = _rand_big(cp, shape, np.float16, 51, 0.25, 1.5)
        dy = _rand_big(cp, shape, np.float16, 52)
        C = shape[axis]
        g, b = _params(cp, C, np.float32, 7)
        y, cache = bnref.batchnorm_forward(x, g, b, EPS, axis=axis)
        dx, dg, db = bnref.batchnorm_backward(dy, cache)
        cp.cuda.Device().synchronize()
        rows3 = len(shape) == 3

        def chan(a, c):
            return (a[:, c, :] if rows3 else a[:, c]).astype(cp.float32)

        e = {"mean": 0.0, "var": 0.0, "dbeta": 0.0}
        for c in range(C):
            xc = chan(x, c)
            m_ref = float(xc.mean(dtype=cp.float64))
            v_ref = float(((xc - np.float32(m_ref)) ** 2).mean(dtype=cp.float64))
            del xc
            dyc = chan(dy, c)
            db_ref = float(dyc.sum(dtype=cp.float64))
            db_scale = float(cp.abs(dyc).sum(dtype=cp.float64))
            del dyc
            e["mean"] = max(e["mean"], abs(float(cache.mean[c]) - m_ref) / (abs(m_ref) + 1.0))
            e["var"] = max(e["var"], abs(float(cache.var[c]) - v_ref) / v_ref)
            e["dbeta"] = max(e["dbeta"], abs(float(db[c]) - db_ref) / db_scale)
        # the last values of the tensor (offsets past 2**31) against the closed forms
        c = C - 1
        tail = (lambda a: a[1, c, -4096:]) if rows3 else (lambda a: a[-4096:, c])
        xs, ys = tail(x).astype(cp.float64), tail(y).astype(cp.float64)
        dys, dxs = tail(dy).astype(cp.float64), tail(dx).astype(cp.float64)
        mu, rs = float(cache.mean[c]), float(cache.inv_std[c])
        gc, bc, dgc, dbc = float(g[c]), float(b[c]), float(dg[c]), float(db[c])
        want_y = (xs - mu) * rs * gc + bc
        e["y_tail"] = float(cp.max(cp.abs(ys - want_y)) / cp.max(cp.abs(want_y)))
        m = x.size // C
        xhat = (xs - mu) * rs
        want_dx = gc * rs * (dys - dbc / m - xhat * dgc / m)
        e["dx_tail"] = float(cp.max(cp.abs(dxs - want_dx))) / (abs(gc * rs) * float(cp.max(cp.abs(dys))))
        w = max(e.values())
        worst = max(worst, w)
        res[str(shape)] = e
        ok &= w <= 1e-2
        del x, dy, y, dx, cache, dg, db
        cp.get_default_memory_pool().free_all_blocks()
    return {"ok": bool(ok), "max_err": f"{worst:.2e}", "cases": res}


def check_count_limit():
    """A channel with >= 2**31 values must be refused with ValueError, not launched."""
    import bnref
    cp = _cp()
    x = cp.empty((2**31 + 2, 1), dtype=cp.float16)
    try:
        bnref.batchnorm_forward(x, None, None)
    except ValueError as exc:
        return {"ok": True, "detail": f"ValueError: {str(exc)[:80]}"}
    finally:
        del x
        cp.get_default_memory_pool().free_all_blocks()
    return {"ok": False, "detail": "no ValueError"}


def check_nan():
    import bnref
    cp = _cp()
    x = _rand(cp, (16, 4, 8, 8), np.float32, 61)
    x[3, 2, 1, 1] = cp.nan
    y, cache = bnref.batchnorm_forward(x, None, None)
    dx, dg, db = bnref.batchnorm_backward(cp.ones_like(x), cache)
    nan_c = bool(cp.all(cp.isnan(y[:, 2])))
    fin_o = bool(cp.all(cp.isfinite(y[:, [0, 1, 3]])))
    return {"ok": nan_c and fin_o and bool(cp.isnan(dg[2])),
            "detail": f"channel 2 all NaN: {nan_c}; other channels finite: {fin_o}"}


def check_running_update():
    cp = _cp()
    from bnref.kernels import cupy_bn
    x = _rand(cp, (64, 16, 7, 7), np.float32, 71, 1.0, 3.0)
    x3 = x.reshape(64, 16, 49)
    rm = cp.asarray(np.random.default_rng(1).standard_normal(16).astype(np.float32))
    rv = cp.asarray(np.random.default_rng(2).uniform(0.5, 2, 16).astype(np.float32))
    rm0, rv0 = rm.copy(), rv.copy()
    import inspect
    stats = getattr(cupy_bn, "_bn_statistics", None)
    if stats is None or "running" not in inspect.signature(stats).parameters:
        return {"ok": True, "skipped": True,
                "detail": "cupy_bn._bn_statistics(..., running=) not found: the finalize kernel's "
                          "running update is not reachable from here"}
    stats(x3, cp.ones(16, cp.float32), cp.zeros(16, cp.float32), EPS, running=(rm, rv, 0.1))
    xh = _host64(cp, x3)
    m = xh.shape[0] * xh.shape[2]
    want_m = 0.9 * cp.asnumpy(rm0) + 0.1 * xh.mean(axis=(0, 2))
    want_v = 0.9 * cp.asnumpy(rv0) + 0.1 * xh.var(axis=(0, 2)) * m / (m - 1)
    e = max(_rel(_host64(cp, rm), want_m), _rel(_host64(cp, rv), want_v))
    return {"ok": e <= 1e-5, "max_err": f"{e:.2e}"}


def _norm_case(kind, shape, dtype_name, groups=None):
    """LayerNorm (parameters on the last axis) or GroupNorm (``groups`` groups, parameters on
    axis 1): bnref on the GPU against bnref's CPU kernels in float64 on the same values."""
    def run():
        import bnref
        cp = _cp()
        dt = _dtype(dtype_name)
        if dt is None:
            return {"ok": True, "skipped": True, "detail": "ml_dtypes missing"}
        ln = kind == "layernorm"
        forward = bnref.layernorm_forward if ln else bnref.groupnorm_forward
        backward = bnref.layernorm_backward if ln else bnref.groupnorm_backward
        extra = () if ln else (groups,)
        seed = 81 if ln else 91
        x = _rand(cp, shape, dt, seed, *((0.5, 2.0) if ln else (-0.3, 1.5)))
        dy = _rand(cp, shape, dt, seed + 1)
        axis = len(shape) - 1 if ln else 1              # the parameters' axis
        g, b = _params(cp, shape[axis], bnref.kernels.stat_dtype(dt), 8 if ln else 9)
        y, c = forward(x, g, b, *extra)
        dx, dg, db = backward(dy, c)
        cp.cuda.Device().synchronize()
        x64, dy64, g64, b64 = (_host64(cp, a) for a in (x, dy, g, b))
        y_r, c_r = forward(x64, g64, b64, *extra)
        dx_r, dg_r, db_r = backward(dy64, c_r)
        inv, mean = np.asarray(c_r.inv_std), np.asarray(c_r.mean)
        # normalised rows: (rows, K) for LayerNorm, (N, G, C / G * spatial) for GroupNorm;
        # x_hat back in x's shape
        rows = x64.reshape(-1, shape[-1]) if ln else x64.reshape(shape[0], groups, -1)
        per_row = rows.shape[:-1] + (1,)
        xh = ((rows - mean.reshape(per_row)) * inv.reshape(per_row)).reshape(shape)
        red = tuple(i for i in range(len(shape)) if i != axis)   # every axis but the parameters'
        errs = {"y": _rel(_host64(cp, y), y_r),
                "dx": _rel(_host64(cp, dx), dx_r, np.max(np.abs(g64)) * inv.max() * np.max(np.abs(dy64))),
                "dgamma": _rel(_host64(cp, dg), dg_r, np.abs(dy64 * xh).sum(axis=red).max()),
                "dbeta": _rel(_host64(cp, db), db_r, np.abs(dy64).sum(axis=red).max())}
        w = max(errs.values())
        return {"ok": w <= TOL[dtype_name], "max_err": f"{w:.2e}", "errs": errs}
    return run


def _inference_case(shape, axis, dtype_name):
    def run():
        import bnref
        cp = _cp()
        dt = _dtype(dtype_name)
        x = _rand(cp, shape, dt, 101, 0.5, 2.0)
        C = shape[axis]
        stat = bnref.kernels.stat_dtype(dt)
        g, b = _params(cp, C, stat, 10)
        rng = np.random.default_rng(11)
        rm = cp.asarray(rng.standard_normal(C).astype(stat))
        rv = cp.asarray(rng.uniform(0.5, 2.0, C).astype(stat))
        y = bnref.batchnorm_inference(x, g, b, rm, rv, EPS, axis=axis)
        y_r = bnref.batchnorm_inference(*(_host64(cp, a) for a in (x, g, b, rm, rv)), EPS, axis=axis)
        e = _rel(_host64(cp, y), y_r)
        return {"ok": e <= TOL[dtype_name] and y.dtype == x.dtype, "max_err": f"{e:.2e}"}
    return run


def check_multi_device():
    cp = _cp()
    n = cp.cuda.runtime.getDeviceCount()
    if n < 2:
        return {"ok": True, "skipped": True, "detail": f"{n} device: array-on-device-1 case not testable"}
    import subprocess
    code = ("import cupy as cp, bnref\n"
            "with cp.cuda.Device(1):\n    x = cp.random.standard_normal((8, 4, 16, 16), dtype=cp.float32)\n"
            "try:\n    y, c = bnref.batchnorm_forward(x, None, None)\n    cp.cuda.Device(0).synchronize()\n"
            "    print('device of y', y.device.id)\nexcept Exception as e:\n    print('raised', type(e).__name__, e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return {"ok": "raised ValueError" in p.stdout or "device of y 1" in p.stdout,
            "detail": (p.stdout + p.stderr)[-300:]}


def run_checks():
    import bnref  # noqa: F401
    cp = _cp()
    RESULTS["device"] = _device_name(cp)
    _private_report()
    _summary("extra correctness checks (bnref GPU vs bnref CPU float64 on the same rounded values):")
    _record("misaligned views take VEC=1 and are right", check_misaligned)
    _record("non-contiguous inputs (strided, channels-last view)", check_noncontiguous)
    _record("non-blocking stream: same bits as default", check_stream)
    _record("determinism: 8 repeats bit-identical", check_determinism)
    odd = [((2, 1, 4, 4), "float32", 1), ((100000, 1), "float32", 1), ((2, 64, 1, 1), "float32", 1),
           ((2, 262144), "float32", 1), ((3, 5, 7), "float32", 1), ((2, 3, 17, 17), "float32", 1),
           ((256, 2048, 7, 7), "float32", 1), ((8, 1024, 14, 14), "float16", 1),
           ((2, 3, 1000), "float16", 1), ((16, 64, 7, 7), "bfloat16", 1), ((4, 6, 49), "float64", 1),
           ((8, 28, 28, 256), "float16", -1), ((65536, 256), "float16", 1), ((5, 3, 2), "float32", 1),
           ((32, 56, 56, 64), "float32", -1), ((256, 7, 7, 2048), "float32", -1),
           ((32, 64, 56, 56), "bfloat16", 1)]
    for shape, dt, axis in odd:
        _record(f"bn {shape} {dt} axis={axis}", _bn_case(shape, dt, axis))
    _record("bn mean 1000 std 1 float32 (8,3,4096)", _bn_case((8, 3, 4096), "float32", 1, 1000.0, 1.0))
    _record("inference (32,64,56,56) float16", _inference_case((32, 64, 56, 56), 1, "float16"))
    _record("inference (32,56,56,64) float32 NHWC", _inference_case((32, 56, 56, 64), -1, "float32"))
    _record("layernorm (4096,1024) float16", _norm_case("layernorm", (4096, 1024), "float16"))
    _record("layernorm (512,4096) float32", _norm_case("layernorm", (512, 4096), "float32"))
    _record("layernorm (64,1000) bfloat16", _norm_case("layernorm", (64, 1000), "bfloat16"))
    _record("groupnorm (8,256,28,28) G=32 float32", _norm_case("groupnorm", (8, 256, 28, 28), "float32", 32))
    _record("groupnorm (8,64,14,14) G=8 float16", _norm_case("groupnorm", (8, 64, 14, 14), "float16", 8))
    _record("NaN in one channel stays in that channel", check_nan)
    _record("finalize's running-stats update", check_running_update)
    _record("per-channel count >= 2**31 refused", check_count_limit)
    _record("> 2**31 elements (64-bit offsets), fp16", check_large_index)
    _record("array on device 1 while device 0 current", check_multi_device)
    n_fail = sum(1 for i in RESULTS["items"] if not i["ok"])
    _summary(f"extra checks: {len(RESULTS['items']) - n_fail} ok (incl. skips), {n_fail} failed")


# ------------------------------------------------------------------------------------ micro

MICRO_CASES = [
    ("NCHW", (32, 64, 56, 56), "float32"),
    ("NHWC", (32, 56, 56, 64), "float32"),
    ("NC", (4096, 1024), "float32"),
    ("NCHW", (8, 256, 28, 28), "float32"),
    ("NHWC", (8, 28, 28, 256), "float32"),
    ("NCHW", (256, 2048, 7, 7), "float32"),
    ("NHWC", (256, 7, 7, 2048), "float32"),
    ("NC", (64, 128), "float32"),
    ("NCHW", (32, 64, 56, 56), "float16"),
    ("NHWC", (32, 56, 56, 64), "float16"),
    ("NCHW", (8, 1024, 14, 14), "float16"),
    ("NCHW", (256, 64, 112, 112), "float32"),
]


class Timer:
    def __init__(self, cp, stream=None):
        self.cp, self.stream = cp, stream

    def per_call(self, fn, n=30, warm=5, before=None):
        """Median of n single calls, each between its own pair of events (bench_gpu.py no longer
        times this way: it queues many calls behind a spin kernel)."""
        cp = self.cp
        for _ in range(warm):
            fn()
        ts = []
        for _ in range(n):
            if before is not None:
                before()
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record(self.stream)
            fn()
            b.record(self.stream)
            b.synchronize()
            ts.append(cp.cuda.get_elapsed_time(a, b) * 1e3)
        return statistics.median(ts)

    def back_to_back(self, fn, n=30, warm=3):
        """n calls between one pair of events: the host overhead overlaps the GPU when it is smaller."""
        cp = self.cp
        for _ in range(warm):
            fn()
        a, b = cp.cuda.Event(), cp.cuda.Event()
        cp.cuda.Device().synchronize()
        a.record(self.stream)
        for _ in range(n):
            fn()
        b.record(self.stream)
        b.synchronize()
        return cp.cuda.get_elapsed_time(a, b) * 1e3 / n

    def host_us(self, fn, n=30):
        cp = self.cp
        fn()
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        cp.cuda.Device().synchronize()
        return (t1 - t0) / n * 1e6


def _bench_gpu():
    """benchmarks/bench_gpu.py, for its CUDA-graph timing (run from the repository root)."""
    where = os.path.join(os.getcwd(), "benchmarks")
    if where not in sys.path:
        sys.path.insert(0, where)
    import bench_gpu
    return bench_gpu


def _graph_time(cp, fn, n=20, k=5):
    """Device time (us) of one fn() call: k calls captured in a CUDA graph, n replays timed
    back to back between one event pair (no host gaps), by bench_gpu.py's capture."""
    bench = _bench_gpu()
    (ms,) = bench.graph_time_cupy(cp, bench.CupyTimeline, [fn], k, 1, lambda: None, replays=n)
    return ms * 1e3


def _kernel_trace(torch, calls, reps=5):
    """Per label: kernel names and mean device time (us per call) from one torch.profiler (CUPTI) trace.

    ``calls`` is [(label, fn)]; each call runs inside record_function(label) followed by a
    synchronize, so its kernels fall inside that range on the GPU timeline (or the CPU one).
    """
    from torch.profiler import ProfilerActivity, profile, record_function
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            for label, fn in calls:
                with record_function(label):
                    fn()
                    torch.cuda.synchronize()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    ev = trace["traceEvents"] if isinstance(trace, dict) else trace
    labels = {label for label, _ in calls}
    ranges = {"gpu": [], "cpu": []}
    for e in ev:
        if e.get("name") in labels and "dur" in e:
            kind = "gpu" if e.get("cat") == "gpu_user_annotation" else "cpu"
            ranges[kind].append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]))
    # CPU ranges first: each holds its call's synchronize, so its kernels run inside it, and
    # kernels launched by CuPy (not by a torch op) get no GPU-side annotation of their own.
    use = ranges["cpu"] or ranges["gpu"]
    out = {label: {} for label in labels}
    unassigned = 0
    for e in ev:
        if e.get("cat") in ("kernel", "Kernel") and "dur" in e:
            ts = float(e["ts"])
            label = next((lab for a, b, lab in use if a <= ts <= b), None)
            if label is None:
                unassigned += 1
                continue
            short = e.get("name", "?").split("(")[0][:90]
            d = out[label].setdefault(short, [0, 0.0])
            d[0] += 1
            d[1] += float(e["dur"])
    res = {label: {k: {"count_per_call": v[0] / reps, "us_per_call": round(v[1] / reps, 2)}
                   for k, v in ks.items()} for label, ks in out.items()}
    res["_ranges"] = "cpu" if ranges["cpu"] else "gpu"
    res["_unassigned_kernels"] = unassigned
    return res


def _ksum(trace, label):
    ks = (trace or {}).get(label) or {}
    return sum(v["us_per_call"] for v in ks.values()) or None


def _copy_us(cp, nbytes, timer, cold_fn=None):
    src = cp.ones(max(nbytes // 4, 1), dtype=cp.float32)
    dst = cp.empty_like(src)
    fn = lambda: dst.data.copy_from_device_async(src.data, src.nbytes)   # noqa: E731
    hot = timer.per_call(fn, n=20, warm=3)
    b2b = timer.back_to_back(fn, n=20)
    cold = timer.per_call(fn, n=10, warm=1, before=cold_fn) if cold_fn else None
    return {"hot_api_us": hot, "b2b_us": b2b, "cold_api_us": cold, "bytes": 2 * src.nbytes}


# The sweep launches bn_stats_rows / bn_stats_cols itself, with the arguments these kernels took
# when it was written. A kernel launched with arguments that do not match its parameters reads
# garbage addresses and breaks the CUDA context for every later stage, so the sweep runs only
# when the source still declares exactly these parameter types.
SWEEP_SIGNATURES = {"bn_stats_rows": ["const T*", "acc_t<T>*", "int", "int", "int"],
                    "bn_stats_cols": ["const T*", "acc_t<T>*", "long long", "int", "int"]}


def _signature(source, name):
    """Parameter types of ``__global__ void name(...)`` in CUDA source text, or None if absent."""
    import re
    m = re.search(r"__global__\s+void\s+" + re.escape(name) + r"\s*\(([^)]*)\)", source)
    if m is None:
        return None
    types = []
    for param in m.group(1).replace("__restrict__", " ").split(","):
        words = param.split()
        types.append(" ".join(words[:-1]).replace(" *", "*") if len(words) > 1 else " ".join(words))
    return types


def _sweep_problem(source):
    """None when the stats kernels still take the sweep's arguments, else what changed."""
    for name, want in SWEEP_SIGNATURES.items():
        got = _signature(source, name)
        if got is None:
            return f"{name} not found"
        if got != want:
            return (f"{name} now takes ({', '.join(got)}), not ({', '.join(want)}): "
                    "the sweep's launch arguments would not fit")
    return None


def _stats_sweep(cp, timer):
    """bn_stats_rows alone on (32,64,56,56) float32 for several splits S and block sizes (graph-timed)."""
    from bnref.kernels import cupy_bn
    kernel = getattr(cupy_bn, "_kernel", None)
    names = " ".join(getattr(cupy_bn, "NAME_EXPRESSIONS", {}).get("bn_stats", ()))
    if kernel is None or "bn_stats_rows<float, 4>" not in names or "bn_stats_cols<float, 4>" not in names:
        return {"skipped": "cupy_bn._kernel or the bn_stats_rows/cols<float, 4> instantiations not found"}
    source = getattr(cupy_bn, "module_source", None)
    problem = "cupy_bn.module_source not found" if source is None else _sweep_problem(source("bn_stats"))
    if problem:
        return {"skipped": problem}
    x = _rand(cp, (32, 64, 3136), np.float32, 5)
    A, C, B = x.shape
    k = kernel("bn_stats", "bn_stats_rows<float, 4>")
    out = {}
    for T in (128, 256, 512):
        for S in (8, 12, 16, 17, 20, 24, 32, 48, 64):
            part = cp.empty((3, C, S), dtype=cp.float32)
            fn = lambda: k((C, S), (T,), (x, part, np.int32(A), np.int32(C), np.int32(B)))   # noqa: E731
            out[f"T={T} S={S}"] = _sweep_item(cp, timer, fn)
    # cols: NHWC (32,56,56,64) float32, block (16,16), several S
    x2 = _rand(cp, (100352, 64, 1), np.float32, 6)
    kc = kernel("bn_stats", "bn_stats_cols<float, 4>")
    for S in (264, 396, 528, 792, 1056, 1584, 2112):
        part = cp.empty((3, 64, S), dtype=cp.float32)
        fn = lambda: kc((1, S), (16, 16), (x2, part, np.int64(100352), np.int32(64), np.int32(1)))   # noqa: E731
        out[f"cols (16,16) S={S}"] = _sweep_item(cp, timer, fn)
    return out


def _sweep_item(cp, timer, fn):
    """Graph-timed us of one launch (back-to-back where capture fails); the error if it fails.

    The launch arguments are those of the kernels' signatures when this tool was written
    (x, partials, A, C, B): a changed signature shows up here as an error, not a crash."""
    try:
        try:
            return round(_graph_time(cp, fn, n=10, k=10), 2)
        except Exception:                                          # noqa: BLE001
            cp.cuda.Device().synchronize()
            return round(timer.back_to_back(fn, n=40), 2)
    except Exception as exc:                                       # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc)[:60]}"


def run_micro():
    import bnref
    cp = _cp()
    torch = _torch()
    F = None
    if torch is not None:
        import torch.nn.functional as F  # noqa: N812
    attrs = cp.cuda.Device().attributes
    name = _device_name(cp)
    L2 = int(attrs.get("L2CacheSize", 50 << 20))
    _private_report()
    RESULTS.update(device=name, sm_count=attrs.get("MultiProcessorCount"), l2_bytes=L2,
                   torch=None if torch is None else torch.__version__,
                   cudnn=None if torch is None else torch.backends.cudnn.version(), cupy=cp.__version__)
    timer = Timer(cp)
    flush_buf = cp.empty(3 * L2, dtype=cp.uint8)
    flush = lambda: flush_buf.fill(1)                                    # noqa: E731  (evicts x, y from L2)
    RESULTS["copy_1GiB"] = _copy_us(cp, 1 << 30, timer)
    copy_gbps = RESULTS["copy_1GiB"]["bytes"] / (RESULTS["copy_1GiB"]["b2b_us"] * 1e-6) / 1e9
    RESULTS["copy_1GiB_GBps"] = copy_gbps
    _save()
    _summary(f"micro: {name}, {attrs.get('MultiProcessorCount')} SMs, L2 {L2 / 2**20:.0f} MiB, "
             f"D2D copy {copy_gbps:.0f} GB/s (1 GiB, read+write)")
    # host cost of one call when the GPU has nothing to do (smallest shape)
    rows = []
    RESULTS["cases"] = {}
    for layout, shape, dt_name in MICRO_CASES:
        key = f"{layout} {shape} {dt_name}"
        r = {}
        RESULTS["cases"][key] = r
        try:
            dt = _dtype(dt_name)
            axis = -1 if layout == "NHWC" else 1
            C = shape[axis]
            x = _rand(cp, shape, dt, 1, 0.5, 2.0)
            dy = _rand(cp, shape, dt, 2)
            g, b = _params(cp, C, bnref.kernels.stat_dtype(dt), 3)
            nb = x.nbytes
            r["bytes_x"] = nb
            fwd = lambda: bnref.batchnorm_forward(x, g, b, EPS, axis=axis)       # noqa: E731
            y, cache = fwd()
            bwd = lambda: bnref.batchnorm_backward(dy, cache)                    # noqa: E731
            ax = axis % len(shape)
            r["plan"] = _plan_info(x.reshape(int(np.prod(shape[:ax])), C, int(np.prod(shape[ax + 1:]))))
            for pas, fn, mb in (("fwd", fwd, 2 * nb), ("bwd", bwd, 3 * nb)):
                p = {"min_bytes": mb}
                p["api_us"] = timer.per_call(fn)
                p["b2b_us"] = timer.back_to_back(fn)
                p["cold_api_us"] = timer.per_call(fn, n=15, warm=1, before=flush)
                p["host_us"] = timer.host_us(fn)
                try:
                    p["graph_us"] = _graph_time(cp, fn)
                except Exception as exc:                                          # noqa: BLE001
                    p["graph_err"] = f"{type(exc).__name__}: {exc}"[:200]
                r[f"bnref_{pas}"] = p
            if torch is not None:
                tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                       "float64": torch.float64}[dt_name]
                xt = torch.as_tensor(x, device="cuda")
                dyt = torch.as_tensor(dy, device="cuda")
                if layout == "NHWC":
                    perm = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
                    xt, dyt = xt.permute(*perm), dyt.permute(*perm)      # logical NCHW, channels_last strides
                assert xt.dtype == tdt
                xt = xt.detach().requires_grad_(True)
                wt = torch.as_tensor(g, device="cuda").detach().requires_grad_(True)
                bt = torch.as_tensor(b, device="cuda").detach().requires_grad_(True)
                r["torch_backend"] = "?"
                for empty in (None, torch.Tensor()):
                    try:
                        r["torch_backend"] = str(torch._C._select_batch_norm_backend(
                            xt, wt, bt, empty, empty, True, EPS)).split(".")[-1]
                        break
                    except Exception as exc:                                      # noqa: BLE001
                        r["torch_backend"] = f"? ({type(exc).__name__})"
                tf = lambda: F.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS)   # noqa: E731
                yt = tf()
                tb = lambda: torch.autograd.grad(yt, (xt, wt, bt), dyt, retain_graph=True)   # noqa: E731
                # bnref's timer: the same device and legacy default stream time both libraries
                for pas, fn, mb in (("fwd", tf, 2 * nb), ("bwd", tb, 3 * nb)):
                    p = {"min_bytes": mb, "api_us": timer.per_call(fn), "b2b_us": timer.back_to_back(fn),
                         "cold_api_us": timer.per_call(fn, n=15, warm=1, before=flush),
                         "host_us": timer.host_us(fn)}
                    r[f"torch_{pas}"] = p
                # device time of PyTorch's forward: CUDA graph of F.batch_norm under no_grad
                def tf_graph():
                    with torch.no_grad():
                        F.batch_norm(xt.detach(), None, None, wt.detach(), bt.detach(), training=True, eps=EPS)
                try:
                    bench = _bench_gpu()
                    (ms,) = bench.graph_time_torch(torch, bench.CupyTimeline(cp), [tf_graph], 1, 1,
                                                   lambda: None, replays=50)
                    r["torch_fwd"]["graph_us"] = ms * 1e3
                except Exception as exc:                                          # noqa: BLE001
                    r["torch_fwd"]["graph_err"] = f"{type(exc).__name__}: {exc}"[:200]
                try:
                    r["kernels"] = _kernel_trace(torch, [("bnref_fwd", fwd), ("bnref_bwd", bwd),
                                                         ("torch_fwd", tf), ("torch_bwd", tb)])
                    for lab in ("bnref_fwd", "bnref_bwd", "torch_fwd", "torch_bwd"):
                        r[lab]["ksum_us"] = _ksum(r["kernels"], lab)
                except Exception as exc:                                          # noqa: BLE001
                    r["kernels_err"] = f"{type(exc).__name__}: {exc}"[:200]
                del xt, dyt, yt
            r["copy_same_size"] = _copy_us(cp, nb, timer, cold_fn=flush)
            del x, dy, y, cache
            cp.get_default_memory_pool().free_all_blocks()
            if torch is not None:
                torch.cuda.empty_cache()
        except Exception as exc:                                                  # noqa: BLE001
            r["error"] = f"{type(exc).__name__}: {exc}"
            r["trace"] = traceback.format_exc()[-1500:]
        _save()
        rows.append((key, r))
        print(f"  done {key}", flush=True)
    try:
        RESULTS["stats_sweep_us"] = _stats_sweep(cp, timer)
    except Exception as exc:                                                      # noqa: BLE001
        RESULTS["stats_sweep_err"] = f"{type(exc).__name__}: {exc}"
    _save()
    _print_micro(rows, copy_gbps)


def _f(v, fmt="{:.1f}"):
    return "n/a" if v is None else fmt.format(v)


def _micro_row(key, r, pas, copy_gbps):
    b = r.get(f"bnref_{pas}", {})
    t = r.get(f"torch_{pas}", {})
    dev_b = b.get("graph_us") or b.get("ksum_us")
    gbps = b["min_bytes"] / (dev_b * 1e-6) / 1e9 if dev_b and b.get("min_bytes") else None
    api_ratio = t["api_us"] / b["api_us"] if t.get("api_us") and b.get("api_us") else None
    k_ratio = t["ksum_us"] / b["ksum_us"] if t.get("ksum_us") and b.get("ksum_us") else None
    return (f"| {key} | {pas} | {_f(b.get('api_us'))} | {_f(b.get('b2b_us'))} | {_f(b.get('graph_us'))} | "
            f"{_f(b.get('ksum_us'))} | {_f(b.get('cold_api_us'))} | {_f(b.get('host_us'))} | "
            f"{_f(gbps, '{:.0f}')} | {_f(None if gbps is None else 100 * gbps / copy_gbps, '{:.0f}%')} | "
            f"{_f(t.get('api_us'))} | {_f(t.get('b2b_us'))} | {_f(t.get('graph_us'))} | "
            f"{_f(t.get('ksum_us'))} | {_f(t.get('cold_api_us'))} | {_f(t.get('host_us'))} | "
            f"{r.get('torch_backend', 'n/a')} | {_f(api_ratio, '{:.2f}')} | {_f(k_ratio, '{:.2f}')} |")


def _print_micro(rows, copy_gbps):
    _summary("")
    _summary("micro-benchmark, us per call. api: one call between two events (host latency plus device time: "
             "the method bench_gpu.py no longer uses); "
             "b2b: 30 calls back to back / 30; graph: CUDA-graph replay (device time incl. gaps); "
             "ksum: sum of kernel durations (CUPTI); cold: api with L2 flushed first; host: enqueue time; "
             "GB/s: minimal bytes (fwd 2|x|, bwd 3|x|) / bnref graph (else ksum)")
    _summary("| case | pass | b api | b b2b | b graph | b ksum | b cold | b host | b GB/s | % copy | "
             "t api | t b2b | t graph | t ksum | t cold | t host | t backend | api t/b | ksum t/b |")
    _summary("|" + " --- |" * 19)
    for key, r in rows:
        if "error" in r:
            _summary(f"| {key} | ERROR {r['error'][:150]} |")
            continue
        for pas in ("fwd", "bwd"):
            try:
                _summary(_micro_row(key, r, pas, copy_gbps))
            except Exception as exc:                                              # noqa: BLE001
                _summary(f"| {key} | {pas} | (row failed: {type(exc).__name__}: {exc}) |")
    _summary("")
    _summary("per-kernel device time (us per call; torch.profiler/CUPTI; all cases in the log and micro.json):")
    key_cases = ("NCHW (32, 64, 56, 56) float32", "NHWC (32, 56, 56, 64) float32", "NC (4096, 1024) float32",
                 "NCHW (256, 2048, 7, 7) float32", "NCHW (8, 1024, 14, 14) float16")
    for key, r in rows:
        out = _summary if key in key_cases else print
        ks = r.get("kernels") or {}
        for lab in ("bnref_fwd", "bnref_bwd", "torch_fwd", "torch_bwd"):
            items = sorted((ks.get(lab) or {}).items(), key=lambda kv: -kv[1]["us_per_call"])[:4]
            if items:
                out(f"  {key} {lab}: " + "; ".join(
                    f"{k.replace('void ', '')[:48]} x{v['count_per_call']:.0f} {v['us_per_call']:.1f}"
                    for k, v in items))
        if r.get("kernels_err"):
            _summary(f"  {key} kernel trace failed: {r['kernels_err']}")
    sw = RESULTS.get("stats_sweep_us")
    if sw and "skipped" in sw:
        _summary("stats sweep skipped: " + sw["skipped"])
    elif sw:
        _summary("bn_stats kernel alone, graph-timed us (rows: (32,64,56,56) f32 grid (64,S) block T; "
                 "cols: (32,56,56,64) f32): " + ", ".join(f"{k}: {v}" for k, v in sw.items()))
    elif RESULTS.get("stats_sweep_err"):
        _summary("stats sweep failed: " + RESULTS["stats_sweep_err"])


# ------------------------------------------------------------------------------------ sanitizer / ncu

def run_sanitize():
    """Every kernel once on small inputs, with the memory pool off (exact allocation bounds)."""
    import bnref
    cp = _cp()
    cp.cuda.set_allocator(None)
    cp.cuda.set_pinned_memory_allocator(None)
    cases = [((4, 6, 64), "float32", 1), ((4, 6, 64), "float16", 1), ((4, 6, 49), "float32", 1),
             ((64, 8), "float32", 1), ((7, 5), "float32", 1), ((16, 4, 3), "float64", 1),
             ((64, 2, 4096), "float32", 1), ((4096, 24), "float16", 1), ((8, 5, 5, 16), "float32", -1)]
    for shape, dt, axis in cases:
        d = _dtype(dt)
        x = _rand(cp, shape, d, 1, 0.5, 2.0)
        dy = _rand(cp, shape, d, 2)
        C = shape[axis]
        y, c = bnref.batchnorm_forward(x, None, None, EPS, axis=axis)
        bnref.batchnorm_backward(dy, c)
        bnref.batchnorm_inference(x, None, None, c.mean, c.var, EPS, axis=axis)
        bnref.batch_statistics(x, axis=axis)
        cp.cuda.Device().synchronize()
        print("ok", shape, dt, C, flush=True)
    for shape in [(33, 64), (16, 1000), (4, 3000), (3, 7)]:
        x = _rand(cp, shape, np.float32, 3)
        y, c = bnref.layernorm_forward(x, None, None)
        bnref.layernorm_backward(x, c)
    for shape, G in [((2, 8, 49), 4), ((4, 6, 1), 3), ((2, 6, 100), 6)]:
        x = _rand(cp, shape, np.float32, 4)
        y, c = bnref.groupnorm_forward(x, None, None, G)
        bnref.groupnorm_backward(x, c)
    cp.cuda.Device().synchronize()
    print("sanitize workload done", flush=True)


def run_ncu():
    """Warm up (compile), then one profiled range: forward + backward of four representative cases."""
    import bnref
    cp = _cp()
    cases = [((32, 64, 56, 56), "float32", 1), ((32, 56, 56, 64), "float32", -1),
             ((256, 2048, 7, 7), "float32", 1), ((8, 1024, 14, 14), "float16", 1)]
    data = []
    for shape, dt, axis in cases:
        d = _dtype(dt)
        x, dy = _rand(cp, shape, d, 1, 0.5, 2.0), _rand(cp, shape, d, 2)
        for _ in range(2):
            y, c = bnref.batchnorm_forward(x, None, None, EPS, axis=axis)
            bnref.batchnorm_backward(dy, c)
        data.append((x, dy, axis))
    cp.cuda.Device().synchronize()
    start = getattr(cp.cuda.runtime, "profilerStart", None)
    stop = getattr(cp.cuda.runtime, "profilerStop", None)
    if start is None:
        from cupy.cuda import profiler
        start, stop = profiler.start, profiler.stop
    start()
    for x, dy, axis in data:
        y, c = bnref.batchnorm_forward(x, None, None, EPS, axis=axis)
        bnref.batchnorm_backward(dy, c)
    cp.cuda.Device().synchronize()
    stop()
    print("ncu workload done: cases in order", [(s, d) for s, d, _ in cases], flush=True)


def main(argv):
    global OUT_JSON, SUMMARY
    mode = argv[1] if len(argv) > 1 else "checks"
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("0 CUDA devices")
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_extra {mode}: no usable GPU through CuPy ({type(exc).__name__}: {exc})", flush=True)
        raise SystemExit(2)
    OUT_JSON = argv[2] if len(argv) > 2 else None
    SUMMARY = argv[3] if len(argv) > 3 else None
    if mode == "checks":
        run_checks()
    elif mode == "micro":
        run_micro()
    elif mode == "sanitize":
        run_sanitize()
    elif mode == "ncu":
        run_ncu()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
