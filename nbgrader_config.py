"""nbgrader configuration for the Batch Normalization course (nbgrader 0.9.6).

The repository root is the course root:

- ``solutions/<ps>/``  instructor (source) notebooks: solutions and hidden tests;
- ``exercises/<ps>/``  student (release) notebooks, generated with
  ``nbgrader generate_assignment <ps> --force`` and committed (the book shows them);
- ``submitted/``, ``autograded/``, ``feedback/``, ``gradebook.db``: created by the grading
  commands, never committed.

See ``book/instructor_guide.md`` for the whole workflow.
"""
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, IgnorePattern,
                                    LimitOutput, SaveAutoGrades)

from bnref.grading.nbgrader_ext import RobustExecute

c = get_config()  # noqa: F821  (injected by nbgrader)

c.CourseDirectory.course_id = "batchnorm"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
# Only notebooks are part of an assignment; nothing else in solutions/<ps>/ is released.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]

# Instructions shown at the top of every student notebook.
c.IncludeHeaderFooter.header = "solutions/header.ipynb"

# Autograding runs every cell of a submission.
# - A cell that runs longer than this (an infinite loop) is interrupted and marked as an
#   error; grading goes on with the next cell.
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
# - A cell that kills the kernel (os._exit, a segfault, out of memory) is marked as an error,
#   a fresh kernel replays the cells before it and grading goes on (RobustExecute); stock
#   nbgrader would drop the whole submission instead.
c.Autograde.autograde_preprocessors = [
    RobustExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
# - Test cells that a student deleted are put back from the source notebook.
c.OverwriteCells.add_missing_cells = True

# Long outputs (a print in a loop) are cut, so feedback stays readable.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 100

# Released notebooks: solutions replaced by a stub that raises NotImplementedError.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
