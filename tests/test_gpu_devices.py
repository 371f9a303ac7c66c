"""Which GPU the work runs on: every GPU entry point runs on its input's device.

Kernels, scratch buffers and results go to the *current* CUDA device, so an array on device 1
while device 0 is current would be read through an illegal address, which breaks the CUDA
context for the rest of the process. bnref therefore makes x's device current around each
GPU entry point (switching only when it is not current already), and refuses any other array
argument on another device with a ValueError naming the argument, its device and x's.

Without a GPU this is tested on a fake CuPy with two fake devices (the emulator's NumPy
stand-in, ``tests/test_gpu_emulator.py``) whose kernel launches are recorded instead of run,
as ``benchmarks/bench_gpu_host.py`` stubs them: each record holds the device that was current
at the launch and the device of every array argument, so a missing device switch fails
(``test_the_launch_record_catches_a_missing_device_switch`` shows it does). The last test
runs the same calls on real CuPy and skips, saying why, with fewer than two GPUs.
"""
import contextlib
import dataclasses
import functools
import sys
import types

import numpy as np
import pytest

import bnref
import test_gpu_emulator as emu
from bnref.kernels import cupy_bn

OTHER = 1            # the device the arrays live on; device 0 is current


@pytest.fixture
def fake(monkeypatch):
    """The fake CuPy installed as ``cupy``, kernel launches recorded (nothing runs), device 0
    current; returns a namespace with ``cp``, ``launches`` and ``entered`` (device ids whose
    context was entered)."""
    cp = emu.FAKE_CUPY
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(cupy_bn, "_cupy", lambda: cp)
    monkeypatch.setattr(emu.FakeDevice, "current", 0)
    # zeros, not garbage: the stubbed kernels write nothing, and the host maths (running
    # statistics, sums over splits) then reads what the allocation holds
    monkeypatch.setattr(cp, "empty", lambda shape, dtype=np.float64: emu._fake(np.zeros(shape, dtype)))
    monkeypatch.setattr(cp, "empty_like", lambda a: emu._fake(np.zeros_like(a)))
    launches, entered = [], []

    class Recorded:
        kernel = types.SimpleNamespace(ptr=0)        # for the occupancy query

        def __init__(self, expression):
            self.expression = expression

        def __call__(self, grid, block, args):
            on = [a.device_id for a in args if isinstance(a, emu.FakeArray)]
            launches.append((self.expression, emu.FakeDevice.current, on))

    for name in cupy_bn.CACHES:         # plans hold kernel handles: fresh ones, recorded
        monkeypatch.setattr(cupy_bn, name, functools.lru_cache(maxsize=None)(
            getattr(cupy_bn, name).__wrapped__))
    monkeypatch.setattr(cupy_bn, "_kernel", lambda name, expression: Recorded(expression))
    enter = emu.FakeDevice.__enter__

    def recording_enter(self):
        entered.append(self.id)
        return enter(self)

    monkeypatch.setattr(emu.FakeDevice, "__enter__", recording_enter)
    return types.SimpleNamespace(cp=cp, launches=launches, entered=entered)


def _on(cp, device, *arrays):
    """Copies of ``arrays`` made on ``device`` (set directly: not a context bnref entered)."""
    outer, emu.FakeDevice.current = emu.FakeDevice.current, device
    try:
        out = tuple(cp.asarray(a) for a in arrays)
    finally:
        emu.FakeDevice.current = outer
    return out if len(out) > 1 else out[0]


def _assert_launched_on(launches, device):
    assert launches, "no kernel was launched"
    for expression, current, on in launches:
        assert current == device, f"{expression} launched with device {current} current, x on {device}"
        assert set(on) == {device}, f"{expression}: arguments on devices {on}, launched on {device}"


def _inputs(cp, rng, shape=(8, 3, 5, 5), axis=1, device=OTHER):
    C = shape[axis]
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    g, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    return _on(cp, device, x, dy, g, b, rm, rv)


# Every public GPU entry point: name -> function of (x, dy, gamma, beta, running_mean,
# running_var) returning the arrays it produced.
def _bn_train(x, dy, g, b, rm, rv):
    y, cache = bnref.batchnorm_forward(x, g, b)
    return (y, *bnref.batchnorm_backward(dy, cache))


def _bn_channels_last(x, dy, g, b, rm, rv):
    xl, dyl = x.transpose(0, 2, 3, 1).copy(), dy.transpose(0, 2, 3, 1).copy()
    y, cache = bnref.batchnorm_forward(xl, g, b, axis=-1)
    return (y, *bnref.batchnorm_backward(dyl, cache))


def _layer_train(x, dy, g, b, rm, rv):
    bn = bnref.BatchNorm2d(x.shape[1])
    bn.gamma, bn.beta, bn.running_mean, bn.running_var = g, b, rm, rv
    y = bn(x)
    return y, bn.backward(dy), bn.dgamma, bn.running_mean, bn.running_var


def _layer_eval(x, dy, g, b, rm, rv):
    bn = bnref.BatchNorm2d(x.shape[1]).eval()
    bn.gamma, bn.beta, bn.running_mean, bn.running_var = g, b, rm, rv
    return bn(x), bn.backward(dy), bn.dgamma


def _layernorm(x, dy, g, b, rm, rv):
    y, cache = bnref.layernorm_forward(x, None, None, normalized_ndim=3)
    return (y, *bnref.layernorm_backward(dy, cache))


def _groupnorm(x, dy, g, b, rm, rv):
    y, cache = bnref.groupnorm_forward(x, g, b, 3)
    return (y, *bnref.groupnorm_backward(dy, cache))


ENTRY_POINTS = {
    "batchnorm_forward+backward": _bn_train,
    "batchnorm channels-last": _bn_channels_last,
    "batchnorm_inference": lambda x, dy, g, b, rm, rv: (bnref.batchnorm_inference(x, g, b, rm, rv),),
    "batch_statistics": lambda x, dy, g, b, rm, rv: bnref.batch_statistics(x),
    "running_stats_update": lambda x, dy, g, b, rm, rv: bnref.running_stats_update(rm, rv, x),
    "BatchNorm2d train": _layer_train,
    "BatchNorm2d eval": _layer_eval,
    "layernorm": _layernorm,
    "groupnorm": _groupnorm,
    "cupy_bn kernels": lambda x, dy, g, b, rm, rv: (
        *cupy_bn.bn_forward_train(x.reshape(8, 3, 25), g, b, 1e-5),
        cupy_bn.bn_inference(x.reshape(8, 3, 25), g, b, rm, rv, 1e-5),
        *cupy_bn.bn_backward(dy.reshape(8, 3, 25), x.reshape(8, 3, 25), rm, rv, g),
        *cupy_bn.bn_stats(x.reshape(8, 3, 25))),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_runs_on_x_device_while_another_is_current(fake, rng, entry):
    args = _inputs(fake.cp, rng)
    assert emu.FakeDevice.current == 0
    out = ENTRY_POINTS[entry](*args)
    _assert_launched_on(fake.launches, OTHER)
    for i, a in enumerate(out):
        assert isinstance(a, emu.FakeArray) and a.device_id == OTHER, (
            f"{entry}: result {i} on device {getattr(a, 'device_id', None)}, x on {OTHER}")
    assert OTHER in fake.entered
    assert emu.FakeDevice.current == 0, "the caller's current device was not restored"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_no_device_switch_when_x_is_on_the_current_device(fake, rng, entry):
    """The common case costs one device query: no context (cudaSetDevice on exit) at all."""
    out = ENTRY_POINTS[entry](*_inputs(fake.cp, rng, device=0))
    _assert_launched_on(fake.launches, 0)
    assert all(a.device_id == 0 for a in out)
    assert fake.entered == []


def test_the_launch_record_catches_a_missing_device_switch(fake, rng, monkeypatch):
    """Without the switch, the kernels would be launched on device 0 with arrays on device 1."""
    monkeypatch.setattr(cupy_bn, "device_scope", lambda x, others=None, x_name="x": contextlib.nullcontext())
    _bn_train(*_inputs(fake.cp, rng))
    with pytest.raises(AssertionError, match="launched with device 0 current, x on 1"):
        _assert_launched_on(fake.launches, OTHER)


# ---- arrays on another device than x are refused, by name ---------------------------------

def _refusals():
    """(id, call(x, dy, g, b, rm, rv, elsewhere), the name the error must give)."""
    def bwd_with(field):
        def call(x, dy, g, b, rm, rv, elsewhere):
            _, cache = bnref.batchnorm_forward(x, g, b)
            bnref.batchnorm_backward(dy, dataclasses.replace(cache, **{field: elsewhere(getattr(cache, field))}))
        return call

    def layer(mode, attr):
        def call(x, dy, g, b, rm, rv, elsewhere):
            bn = bnref.BatchNorm2d(x.shape[1])
            bn.gamma, bn.beta, bn.running_mean, bn.running_var = g, b, rm, rv
            bn.train(mode == "train")
            if mode == "eval-backward":
                bn(x)
            setattr(bn, attr, elsewhere(getattr(bn, attr)))
            bn.backward(dy) if mode == "eval-backward" else bn(x)
        return call

    def norm_bwd_with(kind, field):
        def call(x, dy, g, b, rm, rv, elsewhere):
            if kind == "layernorm":
                _, cache = bnref.layernorm_forward(x, x[0] * 0 + 1, None, normalized_ndim=3)   # gamma (3, 5, 5) on x's GPU
            else:
                _, cache = bnref.groupnorm_forward(x, g, b, 3)
            backward = getattr(bnref, f"{kind}_backward")
            if field == "dy":
                backward(elsewhere(dy), cache)
            else:
                backward(dy, dataclasses.replace(cache, **{field: elsewhere(getattr(cache, field))}))
        return call

    norms = [(f"{kind} backward {field}", norm_bwd_with(kind, field), "dy" if field == "dy" else f"cache.{field}")
             for kind in ("layernorm", "groupnorm") for field in ("dy", "mean", "inv_std", "gamma")]

    return [
        ("forward gamma", lambda x, dy, g, b, rm, rv, e: bnref.batchnorm_forward(x, e(g), b), "gamma"),
        ("forward beta", lambda x, dy, g, b, rm, rv, e: bnref.batchnorm_forward(x, g, e(b)), "beta"),
        ("inference running_mean",
         lambda x, dy, g, b, rm, rv, e: bnref.batchnorm_inference(x, g, b, e(rm), rv), "running_mean"),
        ("inference running_var",
         lambda x, dy, g, b, rm, rv, e: bnref.batchnorm_inference(x, g, b, rm, e(rv)), "running_var"),
        ("backward dy", lambda x, dy, g, b, rm, rv, e: (lambda cache: bnref.batchnorm_backward(
            e(dy), cache))(bnref.batchnorm_forward(x, g, b)[1]), "dy"),
        ("backward cache.mean", bwd_with("mean"), "cache.mean"),
        ("backward cache.inv_std", bwd_with("inv_std"), "cache.inv_std"),
        ("backward cache.gamma", bwd_with("gamma"), "cache.gamma"),
        ("running_stats_update running_var",
         lambda x, dy, g, b, rm, rv, e: bnref.running_stats_update(rm, e(rv), x), "running_var"),
        ("layer train running_mean", layer("train", "running_mean"), "running_mean"),
        ("layer train running_var", layer("train", "running_var"), "running_var"),
        ("layer eval running_var", layer("eval", "running_var"), "running_var"),
        ("layer eval-backward gamma", layer("eval-backward", "gamma"), "gamma"),
        ("layernorm gamma", lambda x, dy, g, b, rm, rv, e: bnref.layernorm_forward(
            x, e(np.ones((3, 5, 5))), None, normalized_ndim=3), "gamma"),
        ("layernorm beta", lambda x, dy, g, b, rm, rv, e: bnref.layernorm_forward(
            x, None, e(np.zeros((3, 5, 5))), normalized_ndim=3), "beta"),
        ("groupnorm gamma", lambda x, dy, g, b, rm, rv, e: bnref.groupnorm_forward(x, e(g), b, 3), "gamma"),
        ("groupnorm beta", lambda x, dy, g, b, rm, rv, e: bnref.groupnorm_forward(x, g, e(b), 3), "beta"),
        *norms,
        ("kernel bn_backward inv_std", lambda x, dy, g, b, rm, rv, e: cupy_bn.bn_backward(
            dy.reshape(8, 3, 25), x.reshape(8, 3, 25), rm, e(rv), g), "inv_std"),
        ("kernel gn_forward beta", lambda x, dy, g, b, rm, rv, e: cupy_bn.gn_forward(
            x.reshape(8, 3, 25), g, e(b), 3, 1e-5), "beta"),
    ]


@pytest.mark.parametrize("call,name", [pytest.param(c, n, id=i) for i, c, n in _refusals()])
def test_an_array_on_another_device_than_x_is_refused_by_name(fake, rng, call, name):
    x, dy, g, b, rm, rv = _inputs(fake.cp, rng, device=0)

    def elsewhere(a):
        fake.launches.clear()       # what ran before the argument was moved does not count
        return _on(fake.cp, OTHER, np.asarray(a))

    with pytest.raises(ValueError, match=rf"^{name} on GPU {OTHER}, but (cache\.)?x on GPU 0; "
                                         r"expected every array on (cache\.)?x's device") as info:
        call(x, dy, g, b, rm, rv, elsewhere)
    assert "cupy.cuda.Device(0)" in str(info.value)            # says how to fix it
    assert fake.launches == [], f"kernels ran before the refusal: {fake.launches}"


def test_a_refused_layer_update_changes_nothing(fake, rng):
    x, dy, g, b, rm, rv = _inputs(fake.cp, rng, device=0)
    bn = bnref.BatchNorm2d(3)
    bn.running_var = _on(fake.cp, OTHER, np.ones(3))
    rm_before = bn.running_mean
    with pytest.raises(ValueError, match="^running_var on GPU 1, but x on GPU 0"):
        bn(x)
    assert bn.num_batches_tracked == 0 and bn.running_mean is rm_before
    assert fake.launches == []


# ---- real GPUs ------------------------------------------------------------------------------

def _two_gpus_or_reason():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, f"CuPy not importable ({type(exc).__name__}: {exc}); the multi-GPU test needs two GPUs"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy cannot reach the driver ({type(exc).__name__}: {exc})"
    if n < 2:
        return None, f"{n} CUDA device(s): the multi-GPU test needs two"
    return cupy, None


@pytest.mark.gpu
def test_real_gpus_every_entry_point_on_device_1_while_0_is_current(rng):
    cupy, reason = _two_gpus_or_reason()
    if cupy is None:
        pytest.skip(reason)
    host = (rng.standard_normal((8, 3, 5, 5)), rng.standard_normal((8, 3, 5, 5)),
            rng.uniform(0.5, 1.5, 3), rng.standard_normal(3), np.zeros(3), np.ones(3))
    with cupy.cuda.Device(1):
        on1 = tuple(cupy.asarray(a) for a in host)
    cupy.cuda.Device(0).use()
    for entry in sorted(ENTRY_POINTS):
        got = ENTRY_POINTS[entry](*on1)
        want = ENTRY_POINTS[entry](*host) if entry != "cupy_bn kernels" else None
        assert cupy.cuda.runtime.getDevice() == 0, entry
        for i, a in enumerate(got):
            assert a.device.id == 1, f"{entry}: result {i} on GPU {a.device.id}"
        if want is not None:
            for a, w in zip(got, want):
                np.testing.assert_allclose(a.get(), w, rtol=1e-9, atol=1e-11, err_msg=entry)
    with cupy.cuda.Device(1):
        cupy.cuda.Device(1).synchronize()          # an illegal address would surface here
    with cupy.cuda.Device(1):
        gamma = cupy.ones(3)
    with pytest.raises(ValueError, match="^gamma on GPU 1, but x on GPU 0"):
        bnref.batchnorm_forward(cupy.asarray(host[0]), gamma, None)
