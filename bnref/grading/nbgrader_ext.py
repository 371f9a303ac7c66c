"""nbgrader preprocessors that make ``nbgrader autograde`` grade in a sandbox.

Configured in the course's ``nbgrader_config.py``::

    c.Autograde.sanitize_preprocessors = [ClearOutput, RestoreTestCells, DeduplicateIds,
                                          OverwriteKernelspec, OverwriteCells, CheckCellMetadata]
    c.Autograde.autograde_preprocessors = [SandboxedGrading, ClearMetadataPreprocessor,
                                           LimitOutput, SaveAutoGrades, AssignLatePenalties,
                                           CheckCellMetadata]

- :class:`RestoreTestCells` (sanitising, before nbgrader's own steps) rebuilds every cell's
  nbgrader metadata from the gradebook: a cell whose ``grade_id`` the gradebook knows gets
  the gradebook's flags and points; any other cell loses its nbgrader metadata, so a
  learner's cell can never pose as a graded one; a deleted test cell is put back.
- :class:`SandboxedGrading` replaces nbgrader's ``Execute``. It runs the learner's code
  cells in a bubblewrap sandbox (:mod:`.runner`), decides every test cell outside it, and
  writes each test cell's only output: ``Passed ...`` or an error with the diagnosis. So the
  score that ``SaveAutoGrades`` computes from the outputs comes from the trusted side
  alone, and the feedback shows each test's diagnosis. The test cells it runs are the
  gradebook's, never the submission's.

Parallel grading: with ``jobs > 1`` (the default: one per CPU core), the first notebook of
an ``nbgrader autograde`` run starts a pool that grades the run's other submissions ahead,
in their own sandboxes, while nbgrader handles them one by one; each notebook then only
waits for its own result. The result is used only if the notebook nbgrader has sanitised
has exactly the code and tests that were graded (a content hash); otherwise it is graded
again on the spot. Progress goes to nbgrader's log: ``[k/n] student/notebook: points``.
"""
import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
from nbformat.notebooknode import NotebookNode
from nbgrader.api import Gradebook
from nbgrader.preprocessors import NbGraderPreprocessor, OverwriteCells
from traitlets import Float, Integer, Unicode, validate

from .runner import grade, to_python
from .sandbox import bwrap
from .sandbox.session import SessionConfig

__all__ = ["RestoreTestCells", "SandboxedGrading"]

TEXT_LIMIT = 20000          # characters of a learner cell's printed output kept in the notebook


# ---------------------------------------------------------------- what the gradebook says
class _Spec:
    """A notebook's cells as the gradebook has them (from ``generate_assignment``)."""

    def __init__(self, db_url, notebook, assignment):
        with Gradebook(db_url) as gb:
            nb = gb.find_notebook(notebook, assignment)
            self.order = [c.name for c in nb.source_cells]
            self.sources = {c.name: (c.cell_type, c.source, c.locked, c.checksum) for c in nb.source_cells}
            self.points = {c.name: float(c.max_score) for c in nb.grade_cells}
            self.solutions = {c.name for c in nb.solution_cells}
        # test cells: graded code cells that are not answers; in the instructor's order
        self.tests = [g for g in self.order if g in self.points and g not in self.solutions
                      and self.sources[g][0] == "code"]

    def metadata(self, gid):
        kind, _, locked, checksum = self.sources[gid]
        md = {"grade": gid in self.points, "solution": gid in self.solutions, "locked": locked,
              "task": False, "grade_id": gid, "schema_version": 3}
        if gid in self.points:
            md["points"] = self.points[gid]
        return md


def _grade_id(cell):
    md = cell.get("metadata", {}).get("nbgrader")
    gid = md.get("grade_id") if isinstance(md, dict) else None
    return gid if isinstance(gid, str) else None


def _extract(nb, spec):
    """(learner cells as plain Python, tests [(grade_id, source)], the learner cells' indices)."""
    tests = set(spec.tests)
    idx = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _grade_id(c) not in tests]
    sources = []
    for i in idx:
        gid = _grade_id(nb.cells[i])
        src = nb.cells[i].source
        if gid in spec.sources and spec.sources[gid][2]:      # a locked cell: the gradebook's text
            src = spec.sources[gid][1]
        sources.append(to_python(src if isinstance(src, str) else ""))
    return sources, [(g, spec.sources[g][1]) for g in spec.tests], idx


def _key(cells, tests, config):
    blob = json.dumps([cells, tests, repr(config)], sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------- sanitising
class RestoreTestCells(NbGraderPreprocessor):
    """Give every cell the nbgrader metadata the gradebook has for it; put back missing test cells.

    Runs before nbgrader's DeduplicateIds, OverwriteCells and CheckCellMetadata, which then
    find only well-formed metadata: a malformed or duplicated cell in one submission would
    otherwise stop the whole autograde run (nbgrader 0.9.6 raises SchemaTooOldError).
    """

    def preprocess(self, nb, resources):
        spec = _Spec(resources["nbgrader"]["db_url"], resources["nbgrader"]["notebook"],
                     resources["nbgrader"]["assignment"])
        seen = set()
        # from the end, as nbgrader's DeduplicateIds does: a grade id's last cell keeps it. The
        # others lose their nbgrader metadata entirely (DeduplicateIds would leave an empty
        # dict, which CheckCellMetadata rejects, aborting the whole autograde run).
        for cell in reversed(nb.cells):
            gid = _grade_id(cell)
            if "nbgrader" in cell.get("metadata", {}):
                del cell.metadata["nbgrader"]
            if gid in spec.sources and gid not in seen:
                cell.metadata["nbgrader"] = NotebookNode(spec.metadata(gid))
                seen.add(gid)          # a changed cell type is put back by OverwriteCells
        missing = [g for g in spec.order if g in spec.points and g not in seen]
        if missing:
            overwrite = OverwriteCells(parent=self)
            for gid in missing:
                self.log.warning("Test cell %s is missing from the submission; putting it back", gid)
                kind, source, locked, checksum = spec.sources[gid]
                src = type("SourceCell", (), {"name": gid, "cell_type": kind, "source": source,
                                              "locked": locked, "checksum": checksum})
                cell = nbformat.from_dict(overwrite.missing_cell_transform(src, spec.points[gid],
                                                                           is_solution=gid in spec.solutions))
                cell.metadata["nbgrader"] = NotebookNode(spec.metadata(gid))
                # after the cell that precedes it in the instructor's notebook, if that is still here
                prev = spec.order[:spec.order.index(gid)]
                pos = len(nb.cells)
                for i, c in enumerate(nb.cells):
                    if _grade_id(c) in prev:
                        pos = i + 1
                nb.cells.insert(pos, cell)
        return nb, resources


# ---------------------------------------------------------------- grading
class SandboxedGrading(NbGraderPreprocessor):
    """Run the learner's code in a sandbox; decide and write every test cell's verdict."""

    sandbox = Unicode("bwrap", help="'bwrap' (bubblewrap sandbox), or 'none' to grade without a "
                                    "sandbox: only for submissions you trust.").tag(config=True)
    call_timeout = Float(10.0, help="Seconds one check may take (all its calls of the learner's "
                                    "functions); a function that exceeds it fails its later checks "
                                    "at once.").tag(config=True)
    cell_timeout = Float(30.0, help="Seconds one learner cell may run.").tag(config=True)
    memory_mb = Integer(2048, help="Address-space limit of each sandboxed process (MB).").tag(config=True)
    processes = Integer(32, help="Processes and threads a sandbox may start.").tag(config=True)
    file_mb = Integer(64, help="Largest file, and size of the sandbox's /scratch (MB).").tag(config=True)
    jobs = Integer(0, help="Sandboxes running at once (0: one per CPU core).").tag(config=True)

    @validate("sandbox")
    def _check_sandbox(self, proposal):
        if proposal["value"] not in ("bwrap", "none"):
            raise ValueError(f"SandboxedGrading.sandbox must be 'bwrap' or 'none', got {proposal['value']!r}")
        return proposal["value"]

    def session_config(self):
        jobs = self.jobs
        if jobs <= 0:
            jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return SessionConfig(
            sandbox=self.sandbox, cell_timeout=self.cell_timeout, call_timeout=self.call_timeout,
            limits=bwrap.Limits(memory_mb=self.memory_mb, processes=self.processes, file_mb=self.file_mb),
            output_limit=TEXT_LIMIT, jobs=max(1, jobs))

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        spec = _Spec(info["db_url"], info["notebook"], info["assignment"])
        config = self.session_config()
        cells, tests, idx = _extract(nb, spec)
        key = _key(cells, tests, config)
        pool = _Pool.of(self, config, (info["assignment"], info["student"]))
        graded, seconds = pool.result(info["assignment"], info["student"], info["notebook"], key,
                                      lambda: grade(cells, tests, config))
        _write(nb, graded, idx, spec)
        got = sum(spec.points[g] for g, v in graded.verdicts.items() if v.passed)
        total = sum(spec.points[g] for g in spec.tests)
        self.log.info("%s %s/%s: %g of %g autograded points (sandbox %.1f s, %d restarts)",
                      pool.progress(), info["student"], info["notebook"], got, total, seconds,
                      graded.restarts)
        return nb, resources


def _write(nb, graded, idx, spec):
    """Put the sandbox's results into the notebook: learner cells' output, test cells' verdicts."""
    count = 0
    for i, report in zip(idx, graded.reports):
        count += 1
        cell = nb.cells[i]
        cell.execution_count, cell.outputs = count, []
        if report.stdout:
            cell.outputs.append(nbformat.v4.new_output("stream", name="stdout",
                                                       text=_text(report.stdout, TEXT_LIMIT)))
        if report.status == "skipped":
            cell.outputs.append(_error("NotRun", "the grader did not run this cell (an earlier cell kept "
                                                 "stopping the notebook)"))
        elif report.error:
            err = report.error
            where = [w for w in err.get("where") or [] if isinstance(w, str)][:5]
            cell.outputs.append(_error(_text(err.get("type"), 100), _text(err.get("message"), 2000), where))
    tests = set(spec.tests)
    for cell in nb.cells:
        gid = _grade_id(cell)
        if gid not in tests:
            continue
        count += 1
        v = graded.verdicts.get(gid)
        cell.execution_count = count
        if v is not None and v.passed:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                                   text=f"Passed.{' ' + v.message if v.message else ''}\n")]
        else:
            cell.outputs = [_error("AssertionError", v.message if v else "not graded")]


def _text(s, limit):
    s = s if isinstance(s, str) else ""
    return s if len(s) <= limit else s[:limit] + "\n[... cut by the grader ...]\n"


def _error(ename, evalue, where=()):
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"{ename}: {evalue}", *where])


# ---------------------------------------------------------------- grading ahead, in parallel
class _Pool:
    """The submissions of one ``nbgrader autograde`` run, graded ``jobs`` at a time."""

    @classmethod
    def of(cls, preprocessor, config, current):
        converter = getattr(getattr(preprocessor, "parent", None), "parent", None)
        pool = getattr(converter, "_bnref_pool", None)
        if pool is None:
            pool = cls(preprocessor, converter, config, current)
            if converter is not None:
                converter._bnref_pool = pool
        return pool

    def __init__(self, preprocessor, converter, config, current):
        self.log, self.config = preprocessor.log, config
        self.futures, self.done, self.lock = {}, 0, threading.Lock()
        self.unavailable = None
        if config.sandbox == "bwrap":
            try:
                bwrap.probe(config.limits)        # refuse at once, with what to do, if no sandbox
            except bwrap.SandboxUnavailable as e:
                self.log.error("%s", e)
                self.unavailable, self.total = e, 1
                return
        todo = self._todo(converter, current) if converter is not None else []
        self.total = max(len(todo), 1)
        if todo and config.jobs > 1:
            self.executor = ThreadPoolExecutor(config.jobs, thread_name_prefix="bnref-grade")
            self.log.info("Grading %d notebooks, %d at a time%s", len(todo), config.jobs,
                          ", each in its own sandbox" if config.sandbox == "bwrap" else ", WITHOUT a sandbox")
            for assignment, student, notebook, path, spec in todo:
                self.futures[(assignment, student, notebook)] = self.executor.submit(self._ahead, path, spec)

    @staticmethod
    def _todo(converter, current):
        """(assignment, student, notebook, path, spec) that this run will grade, in nbgrader's order.

        ``current`` (assignment, student) is being graded now: nbgrader has already made its
        destination folder.
        """
        cd = converter.coursedir
        # submitted/<student>/<assignment>: the folders nbgrader found when the run started
        regexp = cd.format_path(cd.submitted_directory, "(?P<student_id>.*)", "(?P<assignment_id>.*)", escape=True)
        exclude = set(filter(None, (cd.student_id_exclude or "").split(",")))
        specs, todo = {}, []
        for folder in sorted(converter.assignments):
            m = re.match(regexp, folder)
            if not m or m.group("student_id") in exclude:
                continue
            assignment, student = m.group("assignment_id"), m.group("student_id")
            dest = os.path.normpath(cd.format_path(cd.autograded_directory, student, assignment))
            if os.path.exists(dest) and not converter.force and (assignment, student) != current:
                continue                      # nbgrader will skip it (or regrade it inline)
            for path in sorted(converter.assignments[folder]):
                notebook = os.path.splitext(os.path.basename(path))[0]
                if (assignment, notebook) not in specs:
                    try:
                        specs[(assignment, notebook)] = _Spec(cd.db_url, notebook, assignment)
                    except Exception:   # noqa: BLE001 - unknown notebook: nbgrader skips it
                        specs[(assignment, notebook)] = None
                if specs[(assignment, notebook)] is not None:
                    todo.append((assignment, student, notebook, path, specs[(assignment, notebook)]))
        return todo

    def _ahead(self, path, spec):
        t0 = time.monotonic()
        nb = nbformat.read(path, as_version=4)
        cells, tests, _ = _extract(nb, spec)
        return _key(cells, tests, self.config), grade(cells, tests, self.config), time.monotonic() - t0

    def result(self, assignment, student, notebook, key, inline):
        """``(Graded, seconds)``: the pool's result if it graded exactly this code, else ``inline()``."""
        if self.unavailable is not None:
            raise self.unavailable
        future = self.futures.pop((assignment, student, notebook), None)
        with self.lock:
            self.done += 1
        if future is not None:
            try:
                got_key, graded, seconds = future.result()
                if got_key == key:
                    return graded, seconds
            except bwrap.SandboxUnavailable:
                raise
            except Exception as e:   # noqa: BLE001 - e.g. an unreadable notebook: grade it inline
                self.log.warning("Grading ahead failed for %s/%s (%s); grading it now", student, notebook, e)
        t0 = time.monotonic()
        return inline(), time.monotonic() - t0

    def progress(self):
        return f"[{self.done}/{max(self.total, self.done)}]"
