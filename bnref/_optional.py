"""Optional dependencies: imported where used, with an error that says what to install."""
import importlib
import importlib.util
import sys

# import name -> (the name on PyPI, the bnref extra that installs it)
EXTRAS = {
    "sklearn": ("scikit-learn", "course"),
    "matplotlib": ("matplotlib", "course"),
    "ipywidgets": ("ipywidgets", "course"),
    "numba": ("numba", "numba"),
    "cupy": ("cupy-cuda13x (or cupy-cuda12x)", "gpu"),
}


def _installed(top):
    if top in sys.modules:
        return sys.modules[top] is not None     # None: an import of it was blocked
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def require(module, what):
    """Import ``module`` for ``what``; if it is missing, say which ``pip install`` gives it.

    Raises ``ModuleNotFoundError`` (an ``ImportError``), as the import itself would, with a
    message naming the package and the bnref extra.

    Examples
    --------
    >>> require("numpy", "this example").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.partition(".")[0]
        if _installed(top):
            raise                      # the package is there and something inside it is missing
        package, extra = EXTRAS.get(top, (top, None))
        how = f'pip install "bnref[{extra}]"' if extra else f"pip install {package}"
        raise ModuleNotFoundError(f"{what} needs {package}, which is not installed: {how}",
                                  name=e.name) from e
