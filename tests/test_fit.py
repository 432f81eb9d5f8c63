"""Fitting noise models to recorded traces (noisysim.fit, ``noisysim noise fit``).

Traces come from noisysim's own noise models (``simulate``: the models' kernels) with
known parameters. Tolerances:
- recovery: |estimate - truth| <= 4 SE per parameter. For an asymptotically normal MLE
  with a correct SE, P(|z| > 4) = 6.3e-5, so the ~25 checked parameters fail by chance
  with probability ~2e-3 (and the seeds are fixed, so a pass is reproducible).
- SE calibration: over S seeds the sample std s of the estimates has relative standard
  deviation 1 / sqrt(2 (S - 1)) when the SE is right; |s / mean(SE) - 1| <= 4 / sqrt(2 (S-1))
  (plus the relative spread of the SEs themselves, which is far smaller). The mean of the
  estimates must lie within 4 SE / sqrt(S) of the truth (no bias at this resolution).
- likelihoods: the numba recursions against dense numpy/scipy references (naive_fit) to
  1e-9 relative (double rounding over a few hundred terms).
"""

from __future__ import annotations

import math
import re

import h5py
import numpy as np
import pytest

import naive_fit
from noisysim.cli import main
from noisysim.config import load_config
from noisysim.config.load import explain_config
from noisysim.errors import NoisysimError
from noisysim.fit import fit_trace, simulate
from noisysim.fit.hmm import ar1_sum_loglik, hmm_loglik
from noisysim.fit.models import _flip_matrix, expected_bartlett_psd, make_family
from noisysim.noise import (GaussianNoise, OUNoise, PinkNoise, SMTJNoise, TelegraphNoise,
                            make_noise)

N = 100_000
Z = 4.0
MTJ = dict(p_flip=0.0809, mean=0.042092104, sigma=0.00090841466, amplitude=0.0059316154)


def assert_recovered(res, truth):
    for k, v in truth.items():
        se = res.se[k]
        err = abs(res.params[k] - v)
        if se == 0.0:
            assert res.params[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
        else:
            assert err <= Z * se, f"{k}: {res.params[k]} vs {v} is {err / se:.1f} SE"


# ----------------------------------------------------------------------- likelihoods


def test_hmm_forward_matches_log_space_reference():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300) * 0.5 + rng.choice([-1.0, 0.0, 1.0], 300)
    y[17] = 60.0  # far from every level: the scaled recursion must not underflow
    means = np.array([-1.0, 0.1, 0.9])
    trans = _flip_matrix(2, 0.2)
    init = np.array([0.25, 0.5, 0.25])
    got = hmm_loglik(y, means, 0.4, trans, init)
    assert got == pytest.approx(naive_fit.hmm_loglik(y, means, 0.4, trans, init), rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_flip_matrix_matches_enumeration(n):
    np.testing.assert_allclose(_flip_matrix(n, 0.13), naive_fit.flip_matrix(n, 0.13),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("theta,family", [([0.2, 0.7, 5.0], "ou"),
                                          ([0.1, 0.5, 0.7, 3.0], "pink")])
def test_kalman_matches_dense_gaussian(theta, family):
    fam = make_family(family)
    y = simulate(fam.noise(np.array(theta)), 200, seed=4)[:, 0]
    got = fam.loglik(np.array(theta), y[:, None])
    want = naive_fit.gaussian_process_loglik(y, theta[0], fam.acov(np.array(theta), 199))
    assert got == pytest.approx(want, rel=1e-9)


def test_expected_bartlett_psd_matches_dense():
    fam = make_family("pink")
    acov = fam.acov(np.array([0.0, 1.0, 0.8, 4.0]), 63)
    np.testing.assert_allclose(expected_bartlett_psd(acov, 64),
                               naive_fit.expected_periodogram(acov, 64), rtol=1e-10)


def test_ar1_single_term_is_the_exact_ar1_likelihood():
    # closed form: y_0 ~ N(m, s^2), y_t | y_{t-1} ~ N(m + d (y_{t-1} - m), s^2 (1 - d^2))
    y = simulate(OUNoise(tau=3.0, sigma=2.0, mean=1.0), 500, seed=1)[:, 0]
    d = math.exp(-1 / 3.0)
    from scipy import stats
    want = stats.norm.logpdf(y[0], 1.0, 2.0) + stats.norm.logpdf(
        y[1:], 1.0 + d * (y[:-1] - 1.0), 2.0 * math.sqrt(1 - d * d)).sum()
    got = ar1_sum_loglik(y, 1.0, np.array([d]), np.array([4.0]))
    assert got == pytest.approx(want, rel=1e-10)


# ----------------------------------------------------------------------- recovery


@pytest.mark.parametrize("name,noise,model,levels,truth", [
    ("gaussian", GaussianNoise(sigma=0.3, mean=0.1), "gaussian", 2,
     dict(mean=0.1, sigma=0.3)),
    ("ou", OUNoise(tau=5.0, sigma=0.7, mean=0.2), "ou", 2, dict(mean=0.2, sigma=0.7, tau=5.0)),
    ("pink", PinkNoise(sigma=0.5, n_poles=4, base_tau=2.0, mean=0.1), "pink", 2,
     dict(mean=0.1, sigma=0.5, base_tau=2.0, n_poles=4)),
    # three levels: two sMTJ sources, offset 2 mean and read-out std sqrt(2) sigma
    ("telegraph3", SMTJNoise(p_flip=0.05, mean=0.1, sigma=0.2, amplitude=0.5, n_sources=2),
     "telegraph", 3, dict(offset=0.2, amplitude=0.5, sigma=0.2 * math.sqrt(2), p_flip=0.05)),
    # no read-out noise: states observed, offset and amplitude exact
    ("telegraph-exact", TelegraphNoise(p_flip=0.03, amplitude=0.25, offset=-0.5), "telegraph",
     2, dict(offset=-0.5, amplitude=0.25, sigma=0.0, p_flip=0.03)),
])
def test_recovers_every_parameter(name, noise, model, levels, truth):
    res = fit_trace(simulate(noise, N, seed=11), model, levels=levels)
    assert_recovered(res, truth)
    assert type(res.noise) is type(noise)


def test_mtj_study_parameters_come_back():
    res = fit_trace(simulate(make_noise("smtj"), N, seed=2026), "smtj")
    assert_recovered(res, MTJ)
    assert res.noise == SMTJNoise(**res.params)


def test_joint_fit_of_devices_and_per_device():
    y = simulate(OUNoise(tau=4.0, sigma=1.0), 20_000, devices=3, seed=5)
    joint = fit_trace(y, "ou")
    assert joint.n_devices == 3 and joint.n_samples == 20_000
    assert_recovered(joint, dict(mean=0.0, sigma=1.0, tau=4.0))
    each = fit_trace(y, "ou", per_device=True)
    assert [r.device for r in each] == [0, 1, 2]
    # three independent devices: about sqrt(3) times smaller SE jointly (to 10%: the SEs
    # scale with the fitted values, which differ by a few percent between devices)
    ratio = np.mean([r.se["tau"] for r in each]) / joint.se["tau"]
    assert ratio == pytest.approx(math.sqrt(3), rel=0.1)


def test_step_dt_converts_rates_per_step():
    # 4 samples per step: tau 20 samples = 5 steps; p_flip over 4 samples (1 - (1-2p)^4)/2
    ou = fit_trace(simulate(OUNoise(tau=20.0, sigma=1.0), N, seed=3), "ou",
                   dt=1e-6, step_dt=4e-6)
    assert_recovered(ou, dict(tau=5.0))
    assert ou.params_per_sample["tau"] == pytest.approx(4 * ou.params["tau"], rel=1e-12)
    assert ou.noise == OUNoise(tau=ou.params["tau"], sigma=ou.params["sigma"],
                               mean=ou.params["mean"])
    p = 0.02
    sm = fit_trace(simulate(SMTJNoise(p_flip=p), N, seed=4), "smtj", dt=1.0, step_dt=4.0)
    assert_recovered(sm, dict(p_flip=(1 - (1 - 2 * p) ** 4) / 2, sigma=MTJ["sigma"]))
    with pytest.raises(NoisysimError, match="step_dt needs dt"):
        fit_trace(simulate(SMTJNoise(), 500), "smtj", step_dt=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("noise,model,truth,n,seeds", [
    (OUNoise(tau=3.0, sigma=1.0, mean=0.5), "ou", dict(mean=0.5, sigma=1.0, tau=3.0), 5_000,
     40),
    (SMTJNoise(**MTJ), "smtj", {k: MTJ[k] for k in ("mean", "amplitude", "sigma", "p_flip")},
     5_000, 40),
    # pink: long enough that n_poles is always chosen right (its SEs are conditional on it)
    (PinkNoise(sigma=0.5, n_poles=3, base_tau=2.0, mean=0.1), "pink",
     dict(mean=0.1, sigma=0.5, base_tau=2.0), 50_000, 20),
])
def test_standard_errors_match_spread_over_seeds(noise, model, truth, n, seeds):
    fits = [fit_trace(simulate(noise, n, seed=s), model) for s in range(seeds)]
    if model == "pink":
        assert {f.params["n_poles"] for f in fits} == {noise.n_poles}
    names = tuple(truth)
    bound = Z / math.sqrt(2 * (seeds - 1))
    for k in names:
        est = np.array([f.params[k] for f in fits])
        se = np.array([f.se[k] for f in fits])
        assert abs(est.std(ddof=1) / se.mean() - 1) <= bound, (k, est.std(ddof=1), se.mean())
        assert abs(est.mean() - truth[k]) <= Z * se.mean() / math.sqrt(seeds), k


@pytest.mark.slow
def test_auto_picks_the_generating_model():
    cases = {
        "gaussian": GaussianNoise(sigma=0.3, mean=0.1),
        "ou": OUNoise(tau=5.0, sigma=0.7),
        "telegraph": TelegraphNoise(p_flip=0.05, amplitude=0.3),
        "smtj": SMTJNoise(),
        "pink": PinkNoise(sigma=0.5, n_poles=4, base_tau=2.0),
    }
    for name, noise in cases.items():
        hits = sum(type(fit_trace(simulate(noise, N, seed=s), "auto").noise) is type(noise)
                   for s in range(10))
        assert hits >= 9, f"{name}: auto picked it in {hits}/10 seeds"


# ----------------------------------------------------------------------- input files


def test_reads_npy_csv_txt_and_hdf5(tmp_path):
    y = simulate(SMTJNoise(), 2_000, devices=2, seed=1)
    np.save(tmp_path / "t.npy", y)
    with open(tmp_path / "t.csv", "w") as f:
        f.write("time,v_a,v_b\n")
        for i, row in enumerate(y):
            f.write(f"{i},{float(row[0])!r},{float(row[1])!r}\n")
    np.savetxt(tmp_path / "t.txt", y[:, 1])
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["/runs/v"] = y
    ref = fit_trace(y[:, 1:], "smtj")
    for spec, col in [(tmp_path / "t.csv", "v_b"), (tmp_path / "t.txt", None),
                      (f"{tmp_path / 't.h5'}:/runs/v", None), (tmp_path / "t.npy", None)]:
        res = fit_trace(spec, "smtj", column=col, per_device=col is None and
                        not str(spec).endswith(".txt"))
        res = res[1] if isinstance(res, list) else res
        assert res.params == pytest.approx(ref.params, rel=1e-12), spec
        assert len(res.source["sha256"]) == 64


# ----------------------------------------------------------------------- command line


def run(capsys, *args):
    rc = main(["noise", "fit", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def smtj_npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "smtj.npy"
    np.save(path, simulate(SMTJNoise(), 20_000, seed=7)[:, 0])
    return path


def test_cli_writes_noise_toml_that_a_config_includes(tmp_path, capsys, smtj_npy):
    out, fig = tmp_path / "noise.toml", tmp_path / "fit.png"
    rc, stdout, err = run(capsys, smtj_npy, "--dt", "1e-6", "-o", out, "--plot", fig)
    assert rc == 0, err
    assert "* telegraph" in stdout and "p_flip" in stdout
    assert fig.stat().st_size > 10_000
    text = out.read_text()
    assert "sha256" in text and "+-" in text and 'model = "smtj"' in text
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('[noise]\nfile = "noise.toml"\nlayers = [0]\n')
    cfg = load_config(run_toml).to_dict()["noise"]
    assert cfg["model"] == "smtj" and cfg["layers"] == [0]
    assert cfg["provenance"]["trace"] == str(smtj_npy)
    assert cfg["provenance"]["dt"] == 1e-6 and cfg["provenance"]["se"]["p_flip"] > 0
    # a later layer that changes the model drops the fitted provenance
    other = load_config(run_toml, ["noise.model=gaussian", "noise.sigma=0.1"]).to_dict()
    assert "provenance" not in other["noise"]
    # config show names the noise file as the source of its values (provenance included)
    _, origins = explain_config(run_toml)
    for key in ("noise.model", "noise.p_flip", "noise.provenance.dt",
                "noise.provenance.se.p_flip"):
        assert re.fullmatch(r"noise file \S*noise\.toml:\d+", origins[key]), (key, origins[key])
    assert origins["noise.layers"] == f"your file {run_toml}:3"
    # an existing output is kept unless --overwrite
    before = out.read_text()
    rc, _, err = run(capsys, smtj_npy, "--model", "gaussian", "-o", out)
    assert rc == 2 and "--overwrite" in err and out.read_text() == before


def one_line_error(rc, err):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noisysim: error:"), err
    return lines[0]


@pytest.mark.parametrize("make,args,expect", [
    (lambda p: np.save(p / "t.npy", np.r_[np.ones(50), np.nan, np.ones(50)]), ["t.npy"],
     "nan at sample 50"),
    (lambda p: np.save(p / "t.npy", np.full(200, 0.5)), ["t.npy"], "constant"),
    (lambda p: np.save(p / "t.npy", np.arange(50.0)), ["t.npy", "--model", "telegraph"],
     "needs at least 100"),
    (lambda p: np.save(p / "t.npy", np.ones((4, 4, 4))), ["t.npy"], "shape (4, 4, 4)"),
    (lambda p: (p / "t.csv").write_text("a,b\n1,2\n3,4\n"), ["t.csv", "--column", "c"],
     "no column 'c'"),
    (lambda p: h5py.File(p / "t.h5", "w").close(), ["t.h5:/missing"], "no dataset '/missing'"),
    (lambda p: None, ["absent.npy"], "does not exist"),
    # anti-correlated noise (lag-1 correlation -0.4) has no OU maximum (the best OU is
    # tau -> 0, at the boundary): the fit must say it did not converge
    (lambda p: np.save(p / "t.npy", np.diff(np.random.default_rng(1).normal(size=5_001)) / 2),
     ["t.npy", "--model", "ou"], "did not converge"),
])
def test_bad_traces_end_with_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, make,
                                                        args, expect):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = run(capsys, *args, "-o", "noise.toml", "--plot", "fit.png")
    assert expect in one_line_error(rc, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_per_device_writes_one_file_per_device(tmp_path, capsys):
    np.save(tmp_path / "two.npy", simulate(OUNoise(tau=4.0, sigma=1.0), 5_000, devices=2))
    rc, out, err = run(capsys, tmp_path / "two.npy", "--model", "ou", "--per-device",
                       "-o", tmp_path / "noise.toml")
    assert rc == 0, err
    assert "device 0: ou" in out and "device 1: ou" in out
    for d in (0, 1):
        text = (tmp_path / f"noise.{d}.toml").read_text()
        assert 'model = "ou"' in text and f"device = {d}" in text
    assert not (tmp_path / "noise.toml").exists()


def test_noise_file_replaces_a_model_files_noise(tmp_path):
    """A noise file of another model than the included model file's noise: the model file's
    options of its own noise are dropped, the noise file's values and the run file's fixed
    noise keys (hold_upstream) stand, and config show names each source."""
    (tmp_path / "g.toml").write_text('[noise]\nmodel = "gaussian"\nsigma = 0.5\n')
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('[model]\nfile = "mtj_mlp_smtj"\nlayers = [64, 10]\n'
                        '[noise]\nfile = "g.toml"\nhold_upstream = true\n')
    cfg, origins = explain_config(run_toml)
    noise = cfg.to_dict()["noise"]
    assert noise["model"] == "gaussian" and noise["sigma"] == 0.5 and noise["hold_upstream"]
    assert not {"p_flip", "amplitude", "n_sources", "provenance"} & set(noise)
    assert re.fullmatch(r"noise file \S*g\.toml:3", origins["noise.sigma"])
    assert origins["noise.hold_upstream"] == f"your file {run_toml}:6"
    assert origins["noise.layers"].startswith("model file noisysim/models/mtj_mlp_smtj.toml:")


def test_config_noise_file_errors_are_one_line(tmp_path):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('[noise]\nfile = "missing.toml"\n')
    with pytest.raises(NoisysimError, match="noise file not found.*noisysim noise fit"):
        load_config(run_toml)
    (tmp_path / "bad.toml").write_text('[model]\nlayers = [64, 10]\n[noise]\nmodel = "none"\n')
    run_toml.write_text('[noise]\nfile = "bad.toml"\n')
    with pytest.raises(NoisysimError, match="holds only a \\[noise\\] table"):
        load_config(run_toml)
    # the including table's own keys override the file's
    (tmp_path / "g.toml").write_text('[noise]\nmodel = "gaussian"\nsigma = 0.5\n')
    run_toml.write_text('[noise]\nfile = "g.toml"\nsigma = 0.25\n')
    assert load_config(run_toml).to_dict()["noise"]["sigma"] == 0.25
