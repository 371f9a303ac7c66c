"""Every CUDA source in bnref/kernels/cuda compiles to PTX for sm_90 (needs nvcc, not a GPU).

The test compiles exactly what CuPy would: ``cupy_bn.module_source(name)`` (local includes
inlined) plus one reference to every template instantiation in ``cupy_bn.NAME_EXPRESSIONS``,
with the same ``-std=c++17``.
"""
import glob
import os
import re
import shutil
import subprocess

import pytest

from bnref.kernels import cupy_bn


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for pattern in ("/usr/local/cuda/bin/nvcc", "/usr/local/cuda-*/bin/nvcc"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


NVCC = _find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, /usr/local/cuda*/bin)")


def _translation_unit(name):
    refs = ",\n".join(f"  reinterpret_cast<const void*>(&{e})"
                      for e in cupy_bn.NAME_EXPRESSIONS[name])
    return (cupy_bn.module_source(name)
            + f"\n\n// Instantiate every kernel CuPy asks for by name.\nconst void* bnref_kernels_{name}[] = {{\n{refs}\n}};\n")


def test_every_cu_file_has_name_expressions():
    """A .cu file whose kernels the wrapper never names would go untested: forbid it."""
    files = {os.path.basename(p)[:-3] for p in glob.glob(str(cupy_bn.CUDA_DIR / "*.cu"))}
    assert files == set(cupy_bn.NAME_EXPRESSIONS)


def test_module_source_is_self_contained():
    """Local includes are inlined, so CuPy's source-keyed disk cache sees every edit."""
    for name in cupy_bn.NAME_EXPRESSIONS:
        assert '#include "' not in cupy_bn.module_source(name)


@needs_nvcc
@pytest.mark.parametrize("name", sorted(cupy_bn.NAME_EXPRESSIONS))
def test_compiles_to_ptx_for_sm90(name, tmp_path):
    src = tmp_path / f"{name}.cu"
    src.write_text(_translation_unit(name))
    ptx = tmp_path / f"{name}.ptx"
    cmd = [NVCC, "--ptx", "-arch=sm_90", *cupy_bn.COMPILE_OPTIONS, "-o", str(ptx), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert "warning" not in proc.stderr.lower(), proc.stderr
    entries = re.findall(r"^\.visible \.entry (\S+)\(", ptx.read_text(), re.MULTILINE)
    assert len(entries) == len(cupy_bn.NAME_EXPRESSIONS[name]), entries
