"""nbgrader configuration for the Batch Normalization course (nbgrader 0.9.6).

The repository root is the course root:

- ``solutions/<ps>/``  instructor (source) notebooks: solutions and hidden tests;
- ``exercises/<ps>/``  student (release) notebooks, generated with
  ``nbgrader generate_assignment <ps> --force`` and committed (the book shows them);
- ``submitted/``, ``autograded/``, ``feedback/``, ``gradebook.db``: created by the grading
  commands, never committed.

Autograding runs each submission's code in a bubblewrap sandbox and decides every test
cell outside it (``bnref/grading/nbgrader_ext.py``). See ``book/instructor_guide.md``.
"""
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests,
                                    ClearMarkScheme, ClearOutput, ClearSolutions,
                                    ComputeChecksums, DeduplicateIds, InstantiateTests,
                                    LimitOutput, LockCells, OverwriteCells,
                                    OverwriteKernelspec, SaveAutoGrades, SaveCells)

from bnref.grading.header import IncludeHeaderAfterTitle
from bnref.grading.nbgrader_ext import RestoreTestCells, SandboxedGrading

c = get_config()  # noqa: F821  (injected by nbgrader)

c.CourseDirectory.course_id = "batchnorm"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
# Only notebooks are part of an assignment; nothing else in solutions/<ps>/ is released.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]

# Instructions shown at the top of every student notebook, under its title: nbgrader's own
# IncludeHeaderFooter would put them above it (bnref/grading/header.py).
c.IncludeHeaderFooter.header = "solutions/header.ipynb"
c.GenerateAssignment.preprocessors = [
    IncludeHeaderAfterTitle,
    InstantiateTests,
    LockCells,
    ClearSolutions,
    ClearOutput,
    CheckCellMetadata,
    ComputeChecksums,
    SaveCells,
    ClearHiddenTests,
    ClearMarkScheme,
    ComputeChecksums,
    CheckCellMetadata,
]  # nbgrader 0.9.6's list, the header step replaced

# Autograding, step 1 (sanitising the submission): every cell's nbgrader metadata comes from
# the gradebook (a learner's cell cannot pose as a graded one), test cells that were deleted
# are put back, and edited test cells get the gradebook's source again (OverwriteCells).
c.Autograde.sanitize_preprocessors = [
    ClearOutput,
    RestoreTestCells,
    DeduplicateIds,
    OverwriteKernelspec,
    OverwriteCells,
    CheckCellMetadata,
]
# Step 2 (grading): SandboxedGrading replaces nbgrader's Execute. The learner's cells run in
# a sandbox that hands back only what their functions return; the verdict of every test
# cell is computed outside it and written as that cell's only output, which SaveAutoGrades
# turns into points.
c.Autograde.autograde_preprocessors = [
    SandboxedGrading,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
# The sandbox's limits (these are the defaults). A check whose calls of the learner's
# functions take longer than call_timeout fails, and that function's later checks fail at
# once; a learner cell that runs longer than cell_timeout is stopped and left out.
c.SandboxedGrading.call_timeout = 10
c.SandboxedGrading.cell_timeout = 30
c.SandboxedGrading.memory_mb = 2048
# Sandboxes graded at once; 0 = one per CPU core. Where no sandbox can be made (not Linux,
# no bubblewrap, no user namespaces) autograde refuses; for submissions you trust only:
# c.SandboxedGrading.sandbox = "none"
c.SandboxedGrading.jobs = 0

# Long outputs (a print in a loop) are cut, so feedback stays readable.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 100

# Released notebooks: solutions replaced by a stub that raises NotImplementedError.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
