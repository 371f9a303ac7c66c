"""Exercise ``batchnorm_backward(dy, cache) -> (dx, dgamma, dbeta)``, with the learner's own forward.

Problem set 2, for both the staged backward pass and the compact one
(``check_batchnorm_backward(batchnorm_forward, batchnorm_backward_compact, case=...)``): the
check runs the learner's ``batchnorm_forward`` and gives its cache to their backward pass.
"""
import bnref

from .. import inputs
from ..exercise import Exercise, forward_backward_calls
from ..mistakes import backward_diagnoses, eps_of, f64

exercise = Exercise("batchnorm_backward", functions=("batchnorm_forward", "batchnorm_backward"),
                    signature="batchnorm_backward(dy, cache) -> (dx, dgamma, dbeta)")


@exercise.plan
def plan(t, f):
    return forward_backward_calls(t, f["batchnorm_forward"], f["batchnorm_backward"])


@exercise.reference
def reference(t):
    t = f64(t)
    out, cache = bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=eps_of(t))
    dx, dgamma, dbeta = bnref.batchnorm_backward(t["dy"], cache)
    return {"out": out, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


exercise.add(*backward_diagnoses(axes=0, over="the batch (axis 0)", what_m="N"))

F32 = inputs.F32
exercise.case("dgamma_dbeta", lambda r: [inputs.backward(r, 6, 4, 40)], ["dgamma", "dbeta"])
exercise.case("dx", lambda r: [inputs.backward(r, 5, 3, 41)], ["dx"])
exercise.case("small_batch", lambda r: [inputs.backward(r, 2, 3, 46)], ["dx", "dgamma", "dbeta"])
exercise.case("shapes", lambda r: [inputs.backward(r, 32, 5, 42), inputs.backward(r, 2, 3, 43),
                                   inputs.backward(r, 9, 1, 44)], ["dx", "dgamma", "dbeta"], hidden=True)
exercise.case("float32_dtype", lambda r: [inputs.backward(r, 8, 3, 47, dtype=F32)], ["dx", "dgamma", "dbeta"],
              keep_dtype=True)
exercise.case("float32", lambda r: [inputs.backward(r, 16, 4, 45, dtype=F32)], ["dx", "dgamma", "dbeta"],
              hidden=True, keep_dtype=True)
