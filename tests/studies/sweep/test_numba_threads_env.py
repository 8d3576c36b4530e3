"""A worker limited to one thread can still compile numba kernels (the phase-diagram paper run).

Numba reads NUMBA_NUM_THREADS at import and again at every compilation; once its thread
pool is up, a different value in the environment fails the compilation. A worker whose
numba was imported before ``limit_threads`` (spawned outside the thread-count environment)
failed every task of a cold-cache run with "Cannot set NUMBA_NUM_THREADS ...".
"""

import os
import subprocess
import sys

SCRIPT = """
import numba, numpy as np
from studies.sweep.worker import limit_threads
numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # the pool is up, at numba's size
limit_threads(1)

@numba.njit(parallel=True)  # a fresh function: compiled now, so numba re-reads the environment
def total(x):
    s = 0.0
    for i in numba.prange(x.size):
        s += x[i]
    return s

assert total(np.arange(10.0)) == 45.0
assert numba.get_num_threads() == 1
print("ok")
"""


def test_limit_threads_after_numba_started_still_compiles():
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
