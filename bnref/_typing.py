"""Type names for the public API's hints.

``Array`` is a ``numpy.ndarray`` or a ``cupy.ndarray``; CuPy is optional and never imported
for typing, so the alias is ``Any`` to a type checker and documents intent to a reader.
"""
from typing import Any

Array = Any            # numpy.ndarray | cupy.ndarray
