import os
import sys

import pytest

# tests/ holds the plain-numpy references (naive*.py) that test modules import.
sys.path.insert(0, os.path.dirname(__file__))

# The engine tests run on both backends. Without a GPU (CI) the cuda backend runs in numba's
# CUDA simulator, which must be chosen before numba.cuda is first imported;
# NOISYSIM_CUDA_HARDWARE=1 runs them on a real GPU instead.
HARDWARE = os.environ.get("NOISYSIM_CUDA_HARDWARE") == "1"
if not HARDWARE:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from simulator import quick_and_safe

    quick_and_safe()  # a short GIL switch interval, atomic shared arrays (tests/simulator.py)


@pytest.fixture(params=["cpu", "cuda"])
def backend(request):
    """The name of a backend the engine test runs on (the kernel set: ``backends.kernels``)."""
    return request.param
