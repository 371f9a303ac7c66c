"""The command line that starts the worker in a bubblewrap sandbox, and its limits.

What the learner's code sees inside (``bwrap`` from Debian's ``bubblewrap`` package):

- a read-only view of this Python's interpreter, standard library and shared libraries,
  with every ``site-packages``/``dist-packages`` directory hidden under an empty tmpfs;
- NumPy (the grader's own copy, read-only) in ``/sandbox/site``, and the worker's two files
  in ``/sandbox/worker``;
- an empty, size-limited, writable ``/scratch`` (its working directory and ``HOME``),
  ``/tmp`` and ``/dev/shm``; a private ``/proc`` and a minimal, read-only ``/dev``;
- no network (its own, empty network namespace), its own PID, IPC and UTS namespaces, a new
  session (no access to the grader's terminal), an empty environment;
- resource limits (``prlimit``): address space, processes, CPU seconds, file size, open
  files, no core dumps. Wall time is enforced by the grader, which kills the sandbox; its
  PID namespace ends with it, so nothing it started survives.

Not visible: bnref, the grader, ``solutions/``, the gradebook, the course directory, other
submissions, the grading user's home and environment variables.

When the grader runs as root the sandbox drops to user ``nobody`` (uid 65534) with
``setpriv`` after bubblewrap has built its mounts; otherwise it runs as the grading user in
an unprivileged user namespace. ``RLIMIT_NPROC`` counts every process of that user, so the
process limit is set above the number the user already runs.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy

__all__ = ["Limits", "SandboxUnavailable", "sandbox_command", "plain_command", "probe"]

WORKER_DIR = Path(__file__).resolve().parent
NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made here; the message says why and what to do."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox (all of its processes)."""

    memory_mb: int = 2048       # address space of each process (RLIMIT_AS)
    processes: int = 32         # processes and threads (RLIMIT_NPROC, over those already running)
    cpu_s: int = 600            # CPU seconds of each process; wall time is enforced by the grader
    file_mb: int = 64           # largest file written, and the size of /scratch and /tmp
    open_files: int = 256


def _python_paths():
    """(interpreter, directories to bind read-only, site directories to hide)."""
    exe = os.path.realpath(sys.executable)
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    binds = {exe, base["stdlib"], base["platstdlib"]}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        binds.add(libdir)
    # shared libraries (libc, libm, libz, ...); on merged-/usr systems /lib* are symlinks
    for d in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/lib32", "/usr/lib32"):
        if os.path.isdir(d) and not os.path.islink(d):
            binds.add(d)
    hide = {base["purelib"], base["platlib"]}
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    hide |= {"/usr/lib/python3/dist-packages", f"/usr/local/lib/{ver}/dist-packages",
             f"/usr/local/lib/{ver}/site-packages", f"/usr/lib/{ver}/site-packages"}
    binds = {os.path.realpath(b) for b in binds if os.path.exists(b)}
    # drop binds that are inside another bind
    binds = {b for b in binds if not any(b != o and b.startswith(o.rstrip("/") + "/") for o in binds)}
    hide = {os.path.realpath(h) for h in hide if os.path.isdir(h)}
    hide = {h for h in hide if any(h.startswith(b.rstrip("/") + "/") for b in binds)}
    return exe, sorted(binds), sorted(hide)


def _numpy_dirs():
    pkg = Path(numpy.__file__).resolve().parent
    dirs = [(pkg, "/sandbox/site/numpy")]
    libs = pkg.parent / "numpy.libs"        # manylinux wheels keep OpenBLAS here ($ORIGIN/../numpy.libs)
    if libs.is_dir():
        dirs.append((libs, "/sandbox/site/numpy.libs"))
    return dirs


def _parents(path):
    """Each ancestor directory of ``path`` (made world-traversable in the sandbox)."""
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


def _env(limits, output_limit):
    return {"PATH": "/usr/bin:/bin", "HOME": "/scratch", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
            # one thread per BLAS/OpenMP pool: threads count as processes, and grading is parallel
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "BNREF_OUTPUT_LIMIT": str(output_limit)}


def _count_processes(uid):
    n = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                n += p.stat().st_uid == uid
            except OSError:
                pass
    return n


def _prlimit(limits, uid, jobs):
    nproc = _count_processes(uid) + limits.processes * (jobs + 1)
    mb = 1 << 20
    args = [f"--as={limits.memory_mb * mb}", f"--nproc={nproc}", f"--cpu={limits.cpu_s}",
            f"--fsize={limits.file_mb * mb}", f"--nofile={limits.open_files}", "--core=0"]
    prlimit = shutil.which("prlimit")
    if prlimit:
        return [prlimit, *args, "--"]
    # no util-linux prlimit: a tiny launcher sets the same limits, then execs the sandbox
    code = ("import resource as r, os, sys\n"
            f"for k, v in [(r.RLIMIT_AS, {limits.memory_mb * mb}), (r.RLIMIT_NPROC, {nproc}),"
            f" (r.RLIMIT_CPU, {limits.cpu_s}), (r.RLIMIT_FSIZE, {limits.file_mb * mb}),"
            f" (r.RLIMIT_NOFILE, {limits.open_files}), (r.RLIMIT_CORE, 0)]:\n"
            "    r.setrlimit(k, (v, v))\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")
    return [sys.executable, "-I", "-S", "-c", code]


def sandbox_command(limits=Limits(), output_limit=20000, jobs=1):
    """The argv that starts the worker inside bubblewrap."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    exe, binds, hide = _python_paths()
    root = os.geteuid() == 0
    cmd = [bwrap, "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox",
           "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if not root:
        cmd.append("--unshare-user")
    for k, v in _env(limits, output_limit).items():
        cmd += ["--setenv", k, v]
    made = set()

    def mkdirs(path):
        for d in _parents(path):
            if d not in made:
                made.add(d)
                cmd.extend(["--perms", "0755", "--dir", d])

    for b in binds:
        mkdirs(b)
        cmd += ["--ro-bind", b, b]
    for h in hide:
        cmd += ["--tmpfs", h]
    for src, dst in _numpy_dirs():
        mkdirs(dst)
        cmd += ["--ro-bind", str(src), dst]
    for name in ("worker.py", "wire.py"):
        mkdirs(f"/sandbox/worker/{name}")
        cmd += ["--ro-bind", str(WORKER_DIR / name), f"/sandbox/worker/{name}"]
    for link in ("lib", "lib64", "bin"):
        if os.path.islink(f"/{link}"):
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    size = str(limits.file_mb << 20)
    # /dev: bubblewrap's minimal one, read-only but for a size-limited /dev/shm (in a user
    # namespace the sandbox would own an unlimited /dev tmpfs otherwise)
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--perms", "1777", "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev",
            "--size", size, "--perms", "1777", "--tmpfs", "/tmp",
            "--size", size, "--perms", "0777", "--tmpfs", "/scratch", "--chdir", "/scratch"]
    inner = [exe, "-I", "-S", "-c", "import sys; sys.path.insert(0, '/sandbox/site'); "
             "sys.argv = ['/sandbox/worker/worker.py']; import runpy; runpy.run_path(sys.argv[0], run_name='__main__')"]
    if root:
        setpriv = shutil.which("setpriv")
        if not setpriv:
            raise SandboxUnavailable("running as root needs setpriv (util-linux) to drop to nobody")
        setpriv = os.path.realpath(setpriv)
        mkdirs(setpriv)
        cmd += ["--ro-bind", setpriv, setpriv, "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        inner = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--", *inner]
    uid = NOBODY if root else os.getuid()
    # the launcher itself (prlimit, bwrap) needs only PATH; the sandbox's environment is set above
    return _prlimit(limits, uid, jobs) + cmd + inner, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def plain_command(scratch, limits=Limits(), output_limit=20000, jobs=1):
    """The argv of the worker *without* a sandbox (``sandbox = "none"``: trusted submissions).

    It still runs in its own process on values only, in ``scratch`` as its working
    directory, with NumPy (linked into ``scratch/site``) as its only package.
    """
    site = Path(scratch) / "site"
    site.mkdir(exist_ok=True)
    for src, dst in _numpy_dirs():
        link = site / Path(dst).name
        if not link.exists():
            link.symlink_to(src)
    env = {**_env(limits, output_limit), "HOME": str(scratch), "TMPDIR": str(scratch)}
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); sys.argv = [{str(WORKER_DIR / 'worker.py')!r}]; "
            f"import runpy; runpy.run_path(sys.argv[0], run_name='__main__')")
    return _prlimit(limits, os.getuid(), jobs) + [sys.executable, "-I", "-S", "-c", code], env


def probe(limits=Limits()):
    """Raise :class:`SandboxUnavailable` (with what to do) unless a sandbox starts here."""
    if not sys.platform.startswith("linux"):
        why = f"bubblewrap needs Linux (this is {sys.platform})"
    else:
        try:
            argv, env = _probe_argv(limits)
            res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            if res.returncode == 0 and res.stdout.strip() == "ok":
                return
            why = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
        except SandboxUnavailable as e:
            why = str(e)
        except (OSError, subprocess.TimeoutExpired) as e:
            why = str(e)
    raise SandboxUnavailable(
        f"cannot start the grading sandbox: {why}. Submissions are untrusted code, so autograde "
        "stops here. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) on a Linux "
        "machine that allows unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; "
        "on Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0), or, only for "
        "submissions you trust, grade without a sandbox: c.SandboxedGrading.sandbox = 'none' in "
        "nbgrader_config.py.")


def _probe_argv(limits):
    argv, env = sandbox_command(limits)
    # the worker replaced by a one-line check that NumPy imports inside
    return argv[:-1] + ["import sys; sys.path.insert(0, '/sandbox/site'); import numpy; print('ok')"], env
