"""The steady-state training step as a CUDA graph: captured once, replayed at every quiet step.

On a GPU the cost of a small step is the host's, not the arithmetic's: tens of kernel
launches, cuBLAS calls and CuPy operations, each a few microseconds of Python and driver
time. A CUDA graph records the launches of one step once and replays them with one call.
That is correct only when every step of the steady state launches the same work on the
same memory, which the engine guarantees (tests/test_engine.py checks it under the
simulator): the values that change from step to step (the pass clock, the update count,
the step number, the batch's first row) live in device counters that the kernels read and
advance themselves, and the learning rate comes from a table indexed on the device.

``StepGraph`` runs the quiet steps of a run (those that log, snapshot, checkpoint, end an
epoch or compute alignment nothing: ``Trainer._quiet``) and leaves the others to the plain
path. Every launch of the run, graph or not, goes to one non-default stream (CuPy's current
stream, and numba's launches through ``cuda_launch.STREAM``), so their order is the order of
the program. Its life:

1. warm-up: the first quiet step runs plainly, allocating from the graph's own memory pool
   (so that the capture finds every block it needs in the pool; kernels compile here);
2. capture: the second quiet step runs with the stream capturing: the host goes through the
   step (its counters advance once), the GPU records instead of executing; then the graph
   is launched once, which executes that step;
3. replay: every later quiet step launches the graph and advances the host's counters by
   what one captured step advanced them (``Trainer.host_counters``).

A replay runs no host code, so before every step the graph may run the trainer makes the
device counters hold what the plain step would write into them (``Trainer.step_counters``,
``hold_counters``; e.g. the row counter goes back to 0 at an epoch's first step), outside
any capture. A capture that fails (some operation of the step cannot be captured), or whose
step copied host data to the GPU or wrote a counter from the host (a replay would not
refresh either: WP's host-drawn perturbations, for one), is dropped: the state saved before
it comes back, the step runs plainly and the graph is off for the run, with a note.
Under numba's CUDA simulator there are no graphs: the run is plain.

Status: built without a GPU to test it on (issue 10). Under the simulator
tests/test_engine.py checks the bookkeeping with an emulated capture (``StepGraph`` takes
its CUDA side as a ``runtime``) and that a replayed step advances the host as a run step
does; ``experiments/gpu_check.sh`` compares runs with graphs against runs without, bit for
bit, and times both. ``backend.graphs`` is off by default until that has passed on
hardware.
"""

from __future__ import annotations

import contextlib
import sys

from ..kernels import cuda_launch


class CupyRuntime:
    """The CUDA side of a StepGraph: its stream (shared by CuPy and numba), its private
    memory pool and stream capture (CuPy's)."""

    def __init__(self):
        import cupy
        from numba import cuda

        self._cupy = cupy
        # A blocking stream: work that still goes to the legacy default stream (numba's
        # one-off copies at set-up) stays ordered with it. Capture works on any stream but
        # the legacy one.
        self.stream = cupy.cuda.Stream(non_blocking=False)
        self.pool = cupy.cuda.MemoryPool()
        self.numba_stream = cuda.external_stream(self.stream.ptr)

    def current(self):
        """Context: CuPy's current stream is the graph's."""
        return self.stream

    def allocating(self):
        """Context: CuPy allocates from the graph's own pool (what a capture records stays
        the graph's memory)."""
        return self._cupy.cuda.using_allocator(self.pool.malloc)

    def begin_capture(self) -> None:
        self.stream.begin_capture()

    def end_capture(self):
        return self.stream.end_capture()

    def launch(self, graph) -> None:
        graph.launch(stream=self.stream)


class StepGraph:
    """One run's CUDA graph of its quiet training step (module docstring). ``runtime``:
    the CUDA side (default ``CupyRuntime()``; tests pass a stand-in)."""

    def __init__(self, runtime=None, announce=None):
        self.runtime = runtime if runtime is not None else CupyRuntime()
        self.graph = None
        self.warm = False
        self.enabled = True
        self.delta: dict | None = None
        self.generation = -1  # CudaKernels.generation when captured
        self.replays = 0
        self._announce = announce or (lambda m: print(m, file=sys.stderr))

    @contextlib.contextmanager
    def on_stream(self):
        """Every CuPy operation and numba launch inside goes to the graph's stream."""
        previous = cuda_launch.STREAM["numba"]
        cuda_launch.STREAM["numba"] = self.runtime.numba_stream
        try:
            with self.runtime.current():
                yield
        finally:
            cuda_launch.STREAM["numba"] = previous

    def step(self, trainer, plain) -> str:
        """One quiet step: ``plain()`` runs it without a graph (returns "" or a failure)."""
        opt, K, rt = trainer.optimizer, trainer.kernels, self.runtime
        K.schedule(opt, trainer.network.dtype, int(opt.state.count) + 1)  # its window, now
        if self.graph is not None and self.generation != K.generation:
            self.graph, self.warm = None, False  # the step's memory changed: capture anew
        if self.graph is not None:
            rt.launch(self.graph)
            trainer.advance_host_counters(self.delta)
            self.replays += 1
            return ""
        with rt.allocating():
            if not self.warm:
                self.warm = True
                return plain()
            saved = trainer.state_dict()
            before = trainer.host_counters()
            writes, copies = cuda_launch.COUNTER_WRITES["count"], K.counters["to_device"]
            rt.begin_capture()
            try:
                result = plain()
            except Exception as exc:  # the step could not be captured
                with contextlib.suppress(Exception):
                    rt.end_capture()
                first = str(exc).splitlines()[0] if str(exc) else ""
                return self._give_up(trainer, saved, plain, f"{type(exc).__name__}: {first}")
            graph = rt.end_capture()
        # host data a replay would not refresh: a copy from the host (e.g. WP's host-drawn
        # weight perturbations), or a counter written from the host
        copied = K.counters["to_device"] - copies
        if copied:
            return self._give_up(trainer, saved, plain, f"it copies {copied} host arrays to "
                                 "the GPU, which a replay would not refresh")
        if cuda_launch.COUNTER_WRITES["count"] != writes:
            return self._give_up(trainer, saved, plain, "it writes a device counter from the "
                                 "host, which a replay would not do")
        after = trainer.host_counters()
        self.delta = {k: after[k] - before[k] for k in after}
        self.graph, self.generation = graph, K.generation
        rt.launch(graph)  # executes the captured step
        return result

    def _give_up(self, trainer, saved, plain, why: str) -> str:
        """Back to the state before the capture, the step run plainly, graphs off."""
        self.enabled = False
        cuda_launch.forget_counters()  # the device did not run what the host counted
        trainer.load_state_dict(saved)
        self._announce(f"noisysim: this step cannot be captured as a CUDA graph ({why}); "
                       "the run continues without graphs")
        return plain()
