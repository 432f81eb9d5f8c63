"""Passes are time steps of the whole device (SCIENCE.md): a pass that perturbs one layer
(INP) recomputes every layer below it with the intrinsic noise of its own time step, unless
the hardware holds upstream activity (``hold_upstream``); without intrinsic randomness below
the perturbed layer, reusing the reference pass there is exact. On both backends."""

from __future__ import annotations

import numpy as np
import pytest

from backends import device_on, kernels
from noisysim.bench import step_products
from noisysim.device import Device, pass_layout
from noisysim.hardware import Readout, Variability
from noisysim.network import Network
from noisysim.noise import make_noise
from noisysim.rules import make_rule

WIDTHS = [5, 4, 4, 3]
B = 3


def _net(activation="tanh"):
    return Network(WIDTHS, activation=activation, dtype="float64", seed=3)


def _measure(backend, net, noise=None, noise_layers="all", hold=False, hardware=None,
             **request):
    """A fresh device (seed 5) measures one batch; host copies of pre, outputs, losses.
    ``hardware``: the device's readout / variability (noisysim.hardware)."""
    device = device_on(Device(net, noise=noise, noise_layers=noise_layers, seed=5,
                              hold_upstream=hold, **(hardware or {})), backend)
    g = np.random.default_rng(0)
    x = g.normal(size=(B, WIDTHS[0]))
    y = np.arange(B) % WIDTHS[-1]
    m = device.measure(x, y, **request)
    K = kernels(backend)
    return ([K.to_host(a) for a in m.pre], K.to_host(m.outputs), K.to_host(m.losses),
            m.perturbed_layer)


def test_pass_layout_recomputes_from_the_first_random_layer_up():
    # deterministic device: a pass that perturbs layer k reuses the reference below k
    P, layer_of, rows, products = pass_layout("each_layer", 1, None, 3)
    assert (P, layer_of.tolist(), rows, products) == (4, [-1, 0, 1, 2], [2, 3, 4], [1, 2, 3])
    assert pass_layout("layer", 2, 1, 3)[2:] == ([1, 3, 3], [1, 1, 3])
    # randomness in layer 1: every pass computes layers 1, 2 and multiplies layer 2's input
    assert pass_layout("each_layer", 1, None, 3, (1,))[2:] == ([2, 4, 4], [1, 2, 4])
    assert pass_layout("layer", 2, 2, 3, (1, 2))[2:] == ([1, 3, 3], [1, 1, 3])
    assert pass_layout("each_layer", 2, None, 3, (0,))[2:] == ([7, 7, 7], [1, 7, 7])
    # rules that perturb every layer at once already compute every pass
    for random in ((), (0,)):
        assert pass_layout("nodes", 2, None, 3, random)[2:] == ([3, 3, 3], [1, 3, 3])


def test_step_products_count_the_recomputed_layers():
    """INP, 3 layers, K = 1 (P = 4 passes): forward products over 1, 2, 3 passes on a
    deterministic device, 1, 4, 4 when layer 0 is noisy, 1, 2, 4 when layer 1 is."""
    rule = make_rule("inp")

    def forward_passes(prods):  # per layer: the forward product (P_l B, N_in, N_out) first,
        return [prods[2 * l][0] // B for l in range(3)]  # then the gradient's

    for random, passes in (((), [1, 2, 3]), ((0,), [1, 4, 4]), ((1,), [1, 2, 4])):
        prods = step_products(rule, WIDTHS, B, random)
        assert [p[1:] for p in prods[::2]] == list(zip(WIDTHS[:-1], WIDTHS[1:]))
        assert forward_passes(prods) == passes


@pytest.mark.parametrize("case", ["no_model", "none_model", "noise_on_output_only"])
@pytest.mark.parametrize("perturb", ["each_layer", "layer"])
def test_without_randomness_below_the_perturbed_layer_holding_changes_nothing(
        backend, case, perturb):
    """Reuse is exact there: held and fresh give the same bits."""
    noise, layers = {"no_model": (None, "all"), "none_model": (make_noise("none"), "all"),
                     "noise_on_output_only": (make_noise("gaussian", sigma=0.1), [2])}[case]
    request = dict(perturb=perturb, layer=2, samples=2, sigma=0.1, clean_pass=False)
    fresh = _measure(backend, _net(), noise, layers, hold=False, **request)
    held = _measure(backend, _net(), noise, layers, hold=True, **request)
    for a, b in zip(fresh[0] + list(fresh[1:3]), held[0] + list(held[1:3])):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("case", ["gaussian", "telegraph", "stochastic_units"])
@pytest.mark.parametrize("clean_pass", [True, False])
def test_every_pass_draws_fresh_noise_below_the_perturbed_layer(backend, case, clean_pass):
    """Pass p of INP equals, below the layer it perturbs, pass p of an unperturbed
    measurement at the same times (the same noise keys); it differs from the reference
    there. With hold_upstream it is a copy of the reference instead."""
    noise = {"gaussian": make_noise("gaussian", sigma=0.1),
             "telegraph": make_noise("telegraph", p_flip=0.3, amplitude=0.1),
             "stochastic_units": None}[case]
    net = _net("binary_stochastic" if case == "stochastic_units" else "tanh")
    request = dict(perturb="each_layer", samples=1, sigma=0.1, clean_pass=clean_pass)
    pre, _, _, layer_of = _measure(backend, net, noise, **request)
    P = len(layer_of)
    plain, _, _, _ = _measure(backend, net, noise, perturb="none", samples=P - 1,
                              clean_pass=clean_pass)
    held, _, _, _ = _measure(backend, net, noise, hold=True, **request)
    moved = 0
    for p in range(1, P):
        for l in range(layer_of[p]):
            assert pre[l][p].tobytes() == plain[l][p].tobytes(), (p, l)
            assert held[l][p].tobytes() == held[l][0].tobytes(), (p, l)
            moved += not np.array_equal(pre[l][p], pre[l][0])
    # layers below the perturbed one in INP's passes: 0 (pass 2), 0 and 1 (pass 3); with
    # stochastic units and no noise only layer 1 of pass 3 moves (it reads fresh draws)
    assert moved == (1 if case == "stochastic_units" else 3)


def test_hold_upstream_is_a_config_key():
    from noisysim.config import load_config
    from noisysim.experiment import build

    assert load_config(None).noise.hold_upstream is False
    for value in (False, True):
        cfg = load_config(None, [f"noise.hold_upstream={str(value).lower()}"])
        assert build(cfg.to_dict()).device.hold_upstream is value


def test_readout_and_variability_leave_the_fresh_noise_to_the_noisy_layers(backend):
    """The read-out channel reads every pass after the forward computation and draws
    nothing in it: a device with read-out only is deterministic, and holding upstream
    activity changes no bit. Variability scales the intrinsic noise of the layers that
    carry it: those, and only those, still draw fresh noise in every pass."""
    net = _net()
    readout = Readout(noise_std=0.05, bits=6, range=(-3.0, 3.0), loss_noise_std=0.01)
    variability = Variability(0.3)
    gaussian = make_noise("gaussian", sigma=0.1)
    assert Device(net, readout=readout).random_layers() == ()
    assert Device(net, noise=gaussian, noise_layers=[1], readout=readout,
                  variability=variability).random_layers() == (1,)
    request = dict(perturb="each_layer", samples=1, sigma=0.1, clean_pass=False)
    ro = {"readout": readout}
    fresh = _measure(backend, net, hardware=ro, **request)
    held = _measure(backend, net, hold=True, hardware=ro, **request)
    for a, b in zip(fresh[0] + list(fresh[1:3]), held[0] + list(held[1:3])):
        assert a.tobytes() == b.tobytes()
    both = {"readout": readout, "variability": variability}
    pre, _, _, layer_of = _measure(backend, net, gaussian, [1], hardware=both, **request)
    P = len(layer_of)
    plain, _, _, _ = _measure(backend, net, gaussian, [1], hardware=both, perturb="none",
                              samples=P - 1, clean_pass=False)
    for p in range(1, P):
        for l in range(layer_of[p]):
            if backend == "cpu":
                assert pre[l][p].tobytes() == plain[l][p].tobytes(), (p, l)
            else:  # the two measurements' products have other row counts: cuBLAS may pick
                # other kernels, which sum in another order (fresh noise would differ by the
                # noise's size, orders of magnitude more)
                np.testing.assert_allclose(pre[l][p], plain[l][p], rtol=1e-12, atol=1e-12,
                                           err_msg=f"pass {p} layer {l}")
    # pass 3 perturbs layer 2: below it, the noisy layer 1 drew fresh (scaled) noise
    assert layer_of[3] == 2 and not np.array_equal(pre[1][3], pre[1][0])
