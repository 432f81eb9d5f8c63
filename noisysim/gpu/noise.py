"""Device noise on the GPU: the noise models of ``noisysim.noise``, applied by CUDA kernels.

``DeviceNoise(model)`` is the GPU side of one ``NoiseModel``: it keeps the model's parameters
as the kernels take them, holds the process state as device arrays, and calls the twin of
the model's CPU kernel. Draws, keys, element indices, state growth and the n-step transitions
are those of the CPU (``noisysim.noise`` documents them), so the same (seed, layer, times,
state) give the same noise bit for bit. Trace replay gathers from the recording copied to
the device once.
"""

from __future__ import annotations

import numpy as np

from .. import noise as _noise
from ..errors import NoisysimError
from ..kernels import cuda as K
from .arrays import to_device, to_host, xp


class DeviceNoise:
    """The GPU side of a ``NoiseModel``; state dicts hold device arrays."""

    def __init__(self, model: _noise.NoiseModel):
        kinds = (_noise.NoNoise, _noise.GaussianNoise, _noise.MultiplicativeNoise,
                 _noise.BernoulliNoise, _noise.CentredBernoulliNoise, _noise.TelegraphNoise,
                 _noise.SMTJNoise, _noise._OUBase, _noise.TraceNoise)
        if not isinstance(model, kinds):
            raise NoisysimError(f"noise model {model.name!r} has no cuda implementation; "
                                "use backend 'cpu'")
        self.model = model
        self.stateful = model.stateful
        self._consts = None
        self._trace = None

    # -- state ---------------------------------------------------------------------------
    def upload(self, host_state: dict) -> dict:
        """Device copy of a host state dict (from ``model.init_state`` or a checkpoint).

        The copy also holds ``"_last"``, a host int: the latest time any slot has seen (the
        CPU's check that time never goes backwards, without reading the device each call).
        """
        state = {k: to_device(v) for k, v in host_state.items()}
        if self.stateful:
            last = host_state["last_time"]
            state["_last"] = int(np.max(last)) if np.size(last) else -1
        return state

    def download(self, state: dict) -> dict:
        """Host copy of a device state dict (the arrays only)."""
        return {k: to_host(v) for k, v in state.items() if not k.startswith("_")}

    def _prepare_state(self, a, times, state, seed, layer) -> None:
        n_slots, width = a.shape[1], a.shape[2]
        have = state["last_time"].shape[0]
        if n_slots > have:
            new = self.model.init_state(seed, layer, n_slots, width)
            for k in list(state):
                if not k.startswith("_"):
                    state[k] = xp.concatenate([state[k], to_device(new[k][have:])])
        if times.size and times[0] < state["_last"]:
            raise NoisysimError(
                f"{self.model.name} noise in layer {layer}: pass time {int(times[0])} is "
                f"before the state's last time {state['_last']}; time must not go backwards "
                "(restore an earlier state to replay)")

    # -- noise ---------------------------------------------------------------------------
    def apply(self, a, times, state, seed, layer) -> None:
        """a (P, B, N) device array += noise of the P passes at host int64 ``times``."""
        times = np.ascontiguousarray(times, dtype=np.int64)
        if a.size == 0:
            return
        m = self.model
        if self.stateful:
            self._prepare_state(a, times, state, seed, layer)
            state["_last"] = int(times[-1])
        if isinstance(m, _noise.NoNoise):
            return
        if isinstance(m, _noise.GaussianNoise):
            K.gaussian_apply(a, times, seed, layer, m.mean, m.sigma, False)
        elif isinstance(m, _noise.MultiplicativeNoise):
            K.gaussian_apply(a, times, seed, layer, 0.0, m.sigma, True)
        elif isinstance(m, _noise.CentredBernoulliNoise):
            K.bernoulli_apply(a, times, seed, layer, m.p, m.amplitude, 0.0, m.n_sources, True)
        elif isinstance(m, _noise.BernoulliNoise):
            K.bernoulli_apply(a, times, seed, layer, m.p, m.amplitude, m.offset, m.n_sources,
                              False)
        elif isinstance(m, _noise.SMTJNoise):
            K.telegraph_apply(a, times, state["last_time"], state["spin"], seed, layer,
                              m.p_flip, m.amplitude, m.n_sources * m.mean, m.sigma, m.scale,
                              True)
        elif isinstance(m, _noise.TelegraphNoise):
            K.telegraph_apply(a, times, state["last_time"], state["spin"], seed, layer,
                              m.p_flip, m.amplitude, m.offset, 0.0, 1.0, False)
        elif isinstance(m, _noise._OUBase):
            if self._consts is None:
                self._consts = tuple(to_device(c) for c in m._constants)
            K.ou_apply(a, times, state["last_time"], state["x"], seed, layer, *self._consts,
                       m.mean)
        elif isinstance(m, _noise.TraceNoise):
            if self._trace is None:
                self._trace = to_device(m.trace)
            length = m.trace.shape[0]
            per_node = m.mode == "per_node"
            segment = (m.segment if m.segment is not None else max(1, length // a.shape[2])
                       ) if per_node else 1
            K.trace_apply(a, times, self._trace, per_node, segment, m.offset, m.scale)
