"""Checks for the course's autograded exercises (the nbgrader test cells call these).

A test cell looks like::

    import sys; [sys.modules.pop(m) for m in list(sys.modules) if m.partition(".")[0] == "bnref"]
    from bnref.grading import check_batchnorm_forward
    check_batchnorm_forward(batchnorm_forward, case="normalise")

Each check runs the learner's function on one *case* (inputs from :mod:`._cases`), passes
silently (or prints a note) when it is right, and raises ``AssertionError`` with the likely
mistake when it is not ("the variance looks unbiased (divided by N - 1)...").

How the grading resists a learner's code
----------------------------------------
The learner's cells run before the test cells, in the same kernel, so anything importable
could have been replaced by then: ``np.mean``, ``np.allclose``, ``numpy.testing``, ``json``,
``subprocess``, builtins, ``bnref`` itself or this module. The design:

1. **Only a clean process can say "pass".** The verdict is computed by the *judge*, a new
   interpreter started as ``python -I -m bnref.grading._judge`` (isolated: no PYTHONPATH, no
   user site, no notebook directory on ``sys.path``). It rebuilds the test inputs itself from
   the case's seeds (hidden cases mix in a random number drawn by the kernel for each check,
   so their inputs cannot be looked up in this package's source and answered in advance),
   computes the reference with bnref and compares with its own NumPy. It
   receives from the kernel only the *raw bytes* of the learner's outputs, read through the
   buffer protocol (``memoryview``, C code), and answers ``PASS``/``FAIL`` as plain text that
   the kernel parses with ``bytes`` methods. No object of the learner's kernel takes part in
   the comparison, so patching NumPy, ``np.allclose`` or ``numpy.testing`` in the kernel can
   only change what the learner's own function computes.
2. **The kernel side can only fail a test.** It runs the learner's function and reports
   exceptions, wrong return structures, cheating and tampering as failures; it has no path
   that turns a wrong output into a pass.
3. **What the kernel side uses is verified, not trusted.** It obtains the real ``type`` and
   the real built-in-function type from literals (``().__class__.__class__``), and checks that
   every built-in it uses (``sys.setprofile``, ``posix.posix_spawn``, ``pipe``, ``read``,
   ``write``, ``memoryview``, ``isinstance``...) is the genuine C object (a function of the
   right name whose ``__self__`` is the right module; a static, non-heap type), so a fake
   defined in Python is detected. The check is repeated after the learner's function returns
   (built-ins replaced *during* the call), and the watcher below keeps its own verified copies,
   so replacing ``getattr`` or ``os.path`` while the function runs does not blind it. The judge
   is started with ``posix_spawn`` on this kernel's own interpreter binary (checked against
   ``/proc/self/exe``), with a fixed environment.
4. **Fresh checks in every test cell.** Test cells drop every ``bnref`` module from
   ``sys.modules`` before importing, so a replaced ``bnref.grading`` (or a redefined
   ``check_*`` name) from a learner's cell is never used; nbgrader restores deleted or edited
   test cells from the source notebook (``OverwriteCells``, ``add_missing_cells``).
5. **Calling the reference scores 0.** While the learner's functions run, a profiler
   (``sys.setprofile``) records every Python frame from bnref's own files (outside
   ``bnref/grading``) and every frame or C call of a framework's normalisation
   (``torch.batch_norm``, ``F.layer_norm``, ``tf.nn.batch_normalization``...), however the
   function got hold of it; a static scan of the functions' globals and closures catches
   references on branches the tests do not take. An audit hook (which cannot be removed)
   records any attempt to replace the profiler, start processes or use ``ctypes`` while
   being graded; that scores 0 too.

Limits (be honest with instructors): code that runs in the kernel can always lie about its
*own* results at a lower level than these checks: IPython input transformers or custom
exception handlers that hide a failing test cell's error, a replaced ``builtins.__import__`` or
``sys.meta_path`` that hands the test cell a fake module (then none of this code runs),
``ctypes`` writes into interpreter memory, or editing files of the installed grading
environment. Defences are outside the
kernel: run grading in a container with a read-only environment (see the instructor guide)
and scan submissions with ``python -m bnref.grading.audit submitted/`` which lists such code.
"""
import sys as _sys

# A copy of a submodule imported by a learner's cell (and perhaps replaced) must not be used.
for _m in [m for m in _sys.modules if m.startswith("bnref.grading.")]:
    if _m != "bnref.grading.nbgrader_ext":
        del _sys.modules[_m]

from ._kernel import GradingError, run_check  # noqa: E402

__all__ = [
    "GradingError",
    "check_batchnorm_forward", "check_running_stats_update", "check_batchnorm_inference",
    "check_batchnorm_backward", "check_spatial_batchnorm_forward",
    "check_spatial_batchnorm_backward", "check_fold_batchnorm", "check_layernorm_forward",
    "check_layernorm_backward", "check_groupnorm_forward",
]


def check_batchnorm_forward(batchnorm_forward, case):
    """``batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)`` for (N, D) input.

    Cases: ``normalise``, ``scale_shift``, ``eps``, ``exact``; hidden ``shapes``, ``float32``;
    ``implemented`` (runs without error; the visible part of hidden test cells).
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("batchnorm_forward", (batchnorm_forward,), case)


def check_running_stats_update(running_stats_update, case):
    """``running_stats_update(running_mean, running_var, x, momentum=0.1)`` (PyTorch convention).

    Cases: ``momentum``, ``unbiased``; hidden ``sequence``, ``float32``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("running_stats_update", (running_stats_update,), case)


def check_batchnorm_inference(batchnorm_inference, case):
    """``batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5) -> out``.

    Cases: ``running_stats``, ``eps``; hidden ``single_example``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("batchnorm_inference", (batchnorm_inference,), case)


def check_batchnorm_backward(batchnorm_forward, batchnorm_backward, case):
    """``batchnorm_backward(dout, cache) -> (dx, dgamma, dbeta)`` with the learner's own forward.

    Also used for ``batchnorm_backward_compact``. Cases: ``dgamma_dbeta``, ``dx``; hidden
    ``shapes``, ``float32``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("batchnorm_backward", (batchnorm_forward, batchnorm_backward), case)


def check_spatial_batchnorm_forward(spatial_batchnorm_forward, case):
    """``spatial_batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)`` for (N, C, H, W).

    Cases: ``axes``, ``exact``; hidden ``shapes``, ``float32``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("spatial_batchnorm_forward", (spatial_batchnorm_forward,), case)


def check_spatial_batchnorm_backward(spatial_batchnorm_forward, spatial_batchnorm_backward, case):
    """``spatial_batchnorm_backward(dout, cache) -> (dx, dgamma, dbeta)``.

    Cases: ``dgamma_dbeta``, ``dx``; hidden ``shapes``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("spatial_batchnorm_backward", (spatial_batchnorm_forward, spatial_batchnorm_backward), case)


def check_fold_batchnorm(fold_batchnorm, case):
    """``fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5)`` for ``x @ W + b``.

    Cases: ``W_folded``, ``b_folded``, ``no_bias``; hidden ``shapes``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("fold_batchnorm", (fold_batchnorm,), case)


def check_layernorm_forward(layernorm_forward, case):
    """``layernorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)`` for (N, D) input.

    Cases: ``rows``, ``exact``; hidden ``shapes``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("layernorm_forward", (layernorm_forward,), case)


def check_layernorm_backward(layernorm_forward, layernorm_backward, case):
    """``layernorm_backward(dout, cache) -> (dx, dgamma, dbeta)`` with the learner's own forward.

    Cases: ``dgamma_dbeta``, ``dx``; hidden ``shapes``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("layernorm_backward", (layernorm_forward, layernorm_backward), case)


def check_groupnorm_forward(groupnorm_forward, case):
    """``groupnorm_forward(x, gamma, beta, G, eps=1e-5) -> (out, cache)`` for (N, C, H, W).

    Cases: ``groups``, ``exact``; hidden ``shapes``.
    """
    __tracebackhide__ = True   # noqa: F841
    run_check("groupnorm_forward", (groupnorm_forward,), case)
