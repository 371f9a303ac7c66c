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
            + "\n\n// Instantiate every kernel CuPy asks for by name.\n"
            + f"const void* bnref_kernels_{name}[] = {{\n{refs}\n}};\n")


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


# ---- NVRTC: the compiler CuPy actually uses ------------------------------------------------

def _find_nvrtc():
    """libnvrtc from a CUDA toolkit or the nvidia-cuda-nvrtc wheel, if any."""
    import ctypes.util
    import site
    import sys
    roots = [*site.getsitepackages(), sys.prefix]
    candidates = [p for r in roots for p in glob.glob(f"{r}/**/nvidia/*/lib/libnvrtc.so*", recursive=True)]
    candidates += glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*")
    candidates = [p for p in candidates if "builtins" not in p and ".alt." not in p]
    found = ctypes.util.find_library("nvrtc")
    return sorted(candidates)[-1] if candidates else found


NVRTC = _find_nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (CUDA toolkit or pip nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("name", sorted(cupy_bn.NAME_EXPRESSIONS))
def test_nvrtc_compiles_every_name_expression_like_cupy(name):
    """RawModule(code, options, name_expressions) does this, then looks up lowered names."""
    import ctypes
    for builtins in glob.glob(os.path.join(os.path.dirname(NVRTC), "libnvrtc-builtins.so*")):
        if ".alt." not in builtins:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)   # NVRTC dlopens it by soname
    lib = ctypes.CDLL(NVRTC)
    prog = ctypes.c_void_p()
    src = cupy_bn.module_source(name).encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, f"{name}.cu".encode(), 0, None, None) == 0
    names = cupy_bn.NAME_EXPRESSIONS[name]
    for e in names:
        assert lib.nvrtcAddNameExpression(prog, e.encode()) == 0, e
    # CuPy adds -ftz=true and the device's architecture to the caller's options.
    opts = [*(o.encode() for o in cupy_bn.COMPILE_OPTIONS), b"-ftz=true", b"--gpu-architecture=compute_90"]
    status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    try:
        assert status == 0, log.value.decode(errors="replace")
        assert "warning" not in log.value.decode(errors="replace").lower(), log.value.decode()
        for e in names:
            lowered = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(lowered)) == 0, e
            assert lowered.value and lowered.value.startswith(b"_Z"), (e, lowered.value)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
