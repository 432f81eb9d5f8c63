"""How the CUDA kernels of ``noisysim.kernels.cuda`` are launched.

A launch is ``kernel[blocks, THREADS](*args)`` for a grid-stride loop over n items (so the
results never depend on the grid). The arguments are device arrays: CuPy arrays on a GPU,
numpy arrays under numba's CUDA simulator. On a GPU the host cost of a launch, not the
arithmetic, bounds a small step, so numba views of CuPy arrays are made once per memory
layout (``_nb``) and ``LAUNCHES`` counts launches (the tests' budget of a step). The
values that change from step to step are device counters (``counter``, ``clocked``), so a
steady-state step's launches repeat exactly and can be replayed as a CUDA graph.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .cuda_compile import SIMULATED

# Threads per block (a power of two: the block reductions halve it) and a cap on blocks. The
# simulator runs every GPU thread as a Python thread: small blocks, few of them.
THREADS = 8 if SIMULATED else 256
MAX_BLOCKS = 2 if SIMULATED else 65535

_VIEWS: dict = {}
_MAX_VIEWS = 4096


def _nb(a):
    """A numba view of a device array (no stream synchronisation: numba and CuPy use one
    stream, the default one or a CUDA graph's run's (``STREAM``), so launches stay ordered).

    Views of CuPy arrays are made once per memory layout (pointer, shape, strides, dtype)
    and kept: numba's conversion through ``__cuda_array_interface__`` costs more host time
    than a small kernel takes on the GPU. A view does not own its memory (``owner=None``),
    so keeping it keeps no array alive; a kept view is only reused for an array with the
    same pointer and layout, which is then that very memory.
    """
    if isinstance(a, np.ndarray):
        # The simulator copies every array argument back after the launch: hand it a
        # private copy of a read-only (e.g. broadcast) input, which no kernel writes.
        return a if a.flags.writeable else a.copy()
    if SIMULATED or isinstance(a, np.generic) or getattr(a, "__cuda_memory__", False):
        return a
    data = getattr(a, "data", None)
    ptr = getattr(data, "ptr", None)
    if ptr is not None:  # a CuPy array
        key = (ptr, a.shape, a.strides, a.dtype.str)
        view = _VIEWS.get(key)
        if view is None:
            if len(_VIEWS) >= _MAX_VIEWS:
                _VIEWS.clear()
            view = _VIEWS[key] = cuda.from_cuda_array_interface(
                a.__cuda_array_interface__, owner=None, sync=False)
        return view
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a, sync=False)
    return a


def _blocks(n: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-int(n) // THREADS)))


#: kernel launches by this process (read by the tests that count a step's launches)
LAUNCHES = {"count": 0}


#: the numba stream launches go to: None = the default stream (CuPy's too), or the stream
#: of a CUDA graph's run (noisysim.gpu.graph), which CuPy then uses as its current stream
STREAM = {"numba": None}


def launch(kernel, n: int, *args, blocks: int | None = None) -> None:
    """kernel[blocks, THREADS](*args) for a grid-stride loop over n items."""
    if n <= 0:
        return
    args = tuple(_nb(a) for a in args)
    LAUNCHES["count"] += 1
    grid = blocks if blocks is not None else _blocks(n)
    if STREAM["numba"] is None:
        kernel[grid, THREADS](*args)
    else:  # pragma: no cover - needs a GPU
        kernel[grid, THREADS, STREAM["numba"]](*args)


def _to_device(a, like):
    """A small host array as a device array of the kind ``like`` is."""
    if SIMULATED or isinstance(like, np.ndarray):
        return np.ascontiguousarray(a)
    return cuda.to_device(np.ascontiguousarray(a))


_DUMMIES: dict = {}


def _dummy(like, ndim: int, dtype=None):
    """A tiny device array standing in for an unused argument: never an alias of a real
    argument (the simulator copies every argument back after a launch, and an alias
    would undo the kernel's writes)."""
    dt = np.dtype(dtype if dtype is not None else like.dtype)
    k = (isinstance(like, np.ndarray), dt.str, ndim)
    if k not in _DUMMIES:
        _DUMMIES[k] = _to_device(np.zeros((1,) * ndim, dtype=dt), like)
    return _DUMMIES[k]


_SCRATCH: dict = {}


def _reduction_scratch(like):
    """(partials, ticket) of the deterministic grid reductions (``cuda._grid_sum``): one
    float64 slot per block (MAX_BLOCKS) and an int32 counter that every reduction leaves
    at 0, on the device kind ``like`` is. One pair serves every kernel: launches on the
    stream run one after another, and each reads its partials before it ends."""
    k = isinstance(like, np.ndarray)
    if k not in _SCRATCH:
        _SCRATCH[k] = (_to_device(np.zeros(MAX_BLOCKS), like),
                       _to_device(np.zeros(1, dtype=np.int32), like))
    return _SCRATCH[k]


_RETIRED: list = []  # scratch arrays replaced by larger ones (``_segment_scratch``)

#: blocks of the kernels that reduce per arena segment (``cuda._segment_partial``): their
#: partials take a row of this many slots per segment. 1024 blocks of 256 threads fill an
#: H200 (132 SMs of 2048 threads) several times over; a grid-stride loop does the rest.
SEGMENT_BLOCKS = min(MAX_BLOCKS, 1024)


def _segment_blocks(n: int) -> int:
    return max(1, min(SEGMENT_BLOCKS, -(-int(n) // THREADS)))


def _segment_scratch(like, n_segments: int):
    """(partials, ticket) of the per-segment reductions: n_segments rows of SEGMENT_BLOCKS
    float64 slots, grown on demand, and the ticket of ``_reduction_scratch``. A grown-out
    array is kept: a CUDA graph captured with it still writes there when replayed."""
    k = ("segments", isinstance(like, np.ndarray))
    have = _SCRATCH.get(k)
    if have is None or have.shape[0] < n_segments * SEGMENT_BLOCKS:
        if have is not None:
            _RETIRED.append(have)
        have = _SCRATCH[k] = _to_device(np.zeros(n_segments * SEGMENT_BLOCKS), like)
    return have, _reduction_scratch(like)[1]


# ------------------------------------------------------------------------------ counters
# Values that change from step to step (the pass clock, the optimiser's update count, the
# step number) live on the device, where the kernels read them: the arguments of a
# steady-state step's launches are then the same at every step, which is what replaying
# the step (a CUDA graph) needs. The kernels that end a stage advance their counter on the
# device; the host keeps the value it expects and rewrites the device copy only when they
# disagree (the first use, a restored checkpoint, another run in the same process).

_COUNTERS: dict = {}


def counter(name: str, value: int, like):
    """The device int64 array of one element that holds counter ``name`` (on the device
    kind ``like`` is), made to hold ``value``: written only when the host's record of it
    differs."""
    k = (name, isinstance(like, np.ndarray))
    entry = _COUNTERS.get(k)
    if entry is None:
        entry = _COUNTERS[k] = [_counter_array(like), None]
    if entry[1] != int(value):
        entry[0][0] = int(value)  # on the current stream (CuPy): ordered with the kernels
        entry[1] = int(value)
        COUNTER_WRITES["count"] += 1
    return entry[0]


#: host writes of a counter (the tests' check that a steady-state step makes none)
COUNTER_WRITES = {"count": 0}


def _counter_array(like):
    """An int64 array of one element for a counter: a CuPy array on a GPU, whose host
    writes go to CuPy's current stream like every launch (a numba array's would go to the
    legacy default stream, unordered with a CUDA graph run's stream)."""
    if SIMULATED or isinstance(like, np.ndarray):
        return np.zeros(1, dtype=np.int64)
    import cupy  # pragma: no cover - needs a GPU

    return cupy.zeros(1, dtype=np.int64)  # pragma: no cover


def counter_value(name: str, like) -> int:
    """The host's record of counter ``name`` (0 for a new or a forgotten counter, which is
    then written: the device's value is not known)."""
    k = (name, isinstance(like, np.ndarray))
    if k not in _COUNTERS or _COUNTERS[k][1] is None:
        counter(name, 0, like)
    return _COUNTERS[k][1]


def counted(name: str, like, n: int = 1) -> None:
    """Record that a kernel advanced counter ``name`` by n on the device."""
    _COUNTERS[(name, isinstance(like, np.ndarray))][1] += int(n)


def counter_records() -> dict:
    """The host's record of every counter, by (name, simulated)."""
    return {k: v[1] for k, v in _COUNTERS.items()}


def advance_records(delta: dict) -> None:
    """Add ``delta`` (by key of ``counter_records``) to the host's records: what replaying
    a captured step did to the device's counters."""
    for k, d in delta.items():
        if d:
            _COUNTERS[k][1] += d


def forget_counters() -> None:
    """Drop the host's records: the next use of every counter writes it (after work the
    device did not run, such as an abandoned capture)."""
    for entry in _COUNTERS.values():
        entry[1] = None


def clocked(times, like):
    """(index, clock, offset, count) for the runs of consecutive pass times (``runs``):
    pass p of a run has time clock[0] + offset + p, where clock is the device's pass
    clock (counter "clock"; the Device sets it to its own clock before a measurement and
    advances it after), so the offsets of a step's launches are the same at every step.
    Correct whatever the clock holds: the offsets are taken from the host's record of it."""
    base = counter_value("clock", like)
    clock = _COUNTERS[("clock", isinstance(like, np.ndarray))][0]
    return [(i, clock, np.int64(t0 - base), n) for i, t0, n in runs(times)]


def runs(times):
    """(index, t0, count) of the maximal runs of consecutive integers in ``times``: pass p
    of a run has time t0 + p, so kernels derive their keys on the device (no copies)."""
    times = np.asarray(times, dtype=np.int64)
    if times.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(times) != 1) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [times.size]])
    return [(int(i), int(times[i]), int(j - i)) for i, j in zip(starts, stops)]


def _u64(v):
    return np.uint64(int(v))


def _flat(a):
    return a.reshape(-1)
