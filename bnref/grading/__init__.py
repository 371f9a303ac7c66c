"""Grading for the course's exercises: the checks, and the sandboxed autograder behind nbgrader.

- :mod:`.exercises`: one module per exercise (cases, call plan, reference, named diagnoses);
- :mod:`.exercise`: how one check is decided (:func:`~.exercise.evaluate`);
- :mod:`.checks`: the ``check_*`` functions the notebooks' test cells call, for feedback in
  the learner's own kernel;
- :mod:`.runner` and :mod:`.sandbox`: the trusted grader. It runs a submission's code in a
  bubblewrap sandbox that hands back only the values its functions return, and decides
  every verdict outside the learner's reach;
- :mod:`.nbgrader_ext`: the nbgrader preprocessors that plug it into ``nbgrader autograde``;
- :mod:`.audit`: a scan of submissions for code an instructor should read.

A test cell looks like::

    from bnref.grading import check_batchnorm_forward
    check_batchnorm_forward(batchnorm_forward, case="normalise")
"""
from .checks import CHECKS, GradingError

globals().update(CHECKS)

__all__ = ["GradingError", *sorted(CHECKS)]
