"""The sandbox a submission's code runs in when it is graded.

- :mod:`.bwrap`: the bubblewrap command line and resource limits;
- :mod:`.session`: the trusted side of one run (start, deadlines, restarts);
- :mod:`.worker`: the untrusted side, run inside the sandbox (standard library and NumPy only);
- :mod:`.wire`: the plain-data format between them (no pickle).
"""
