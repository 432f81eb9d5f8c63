#!/usr/bin/env python
"""Experiment g: fit a simulated sMTJ recording, train on the fitted device, compare with
training on the true device.

    python experiments/g_fitted_noise.py [--quick | --full] [--seeds 0,1,2] [--root DIR]

1. "Record" a device: an sMTJ trace with the MTJ study's parameters (noisysim's own
   SMTJNoise, ``--samples``, default 1e6; --quick 1e5), saved as runs/g*/trace.npy.
2. Fit it (``noisysim.fit.fit_trace``, model auto: it must pick the sMTJ form) and write
   the [noise] file with its provenance: runs/g*/fitted_noise.toml.
3. Train ANP and DANP (two noisy passes, no injected perturbation: the rules learn from the
   device's noise alone) on the true device (models/mtj_mlp_smtj.toml) and on the fitted
   one (the same config with noise.file = fitted_noise.toml), same seeds.
4. Print the fitted parameters against the true ones and the final test accuracy of each
   (rule, device) as mean +- std over seeds; the table is also written to
   results/g*/table.md.

Sizes: default digits 64-32-32-32-10, 50 epochs, 3 seeds (minutes on 2 cores); --quick 2
epochs, 1 seed (seconds, for checking); --full Fashion-MNIST 784-256-256-256-10, 10
epochs, 3 seeds (the size of experiment d).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from noisysim.analysis import summarize  # noqa: E402
from noisysim.config import load_config  # noqa: E402
from noisysim.experiment import run  # noqa: E402
from noisysim.fit import fit_trace, format_table, simulate  # noqa: E402
from noisysim.noise import SMTJNoise  # noqa: E402

SPEC = HERE / "g_fitted_noise.toml"
RULES = ("anp", "danp")
SIZES = {
    "quick": dict(samples=100_000, seeds=[0], sets=["train.epochs=2"]),
    "default": dict(samples=1_000_000, seeds=[0, 1, 2], sets=[]),
    "full": dict(samples=1_000_000, seeds=[0, 1, 2],
                 sets=["data.name=fashion-mnist", "model.layers=[784,256,256,256,10]",
                       "train.epochs=10"]),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1e5 samples, 2 epochs, 1 seed")
    size.add_argument("--full", action="store_true", help="Fashion-MNIST, experiment d's size")
    p.add_argument("--samples", type=int, default=None, help="length of the recorded trace")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds")
    p.add_argument("--root", default=str(REPO), help="runs/ and results/ go here")
    args = p.parse_args(argv)
    size = "quick" if args.quick else ("full" if args.full else "default")
    plan = SIZES[size]
    samples = args.samples or plan["samples"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else plan["seeds"]
    tag = "g" if size == "default" else f"g-{size}"
    runs = Path(args.root) / "runs" / tag
    results = Path(args.root) / "results" / tag
    runs.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)

    # 1-2: record and fit
    true = SMTJNoise()
    trace = runs / "trace.npy"
    np.save(trace, simulate(true, samples, seed=12345)[:, 0])
    fit = fit_trace(trace, "auto")
    noise_file = runs / "fitted_noise.toml"
    noise_file.write_text(fit.to_toml())
    lines = [f"# Experiment g ({size}): training on a fitted sMTJ device", "",
             f"Trace: {samples} samples of SMTJNoise() (the MTJ study's parameters); "
             f"auto picked {fit.model} -> {type(fit.noise).__name__}.", "", "```",
             format_table(fit.candidates), "```", "",
             "| parameter | true | fitted +- SE | (fitted - true) / SE |", "|---|---|---|---|"]
    fitted = fit.noise.params()
    names = {"offset": "mean"}  # the two-level telegraph's offset is the sMTJ mean
    for k, se in fit.se.items():
        k2 = names.get(k, k)
        t, v = getattr(true, k2), fitted[k2]
        z = (v - t) / se if se > 0 else math.nan
        lines.append(f"| {k2} | {t:.8g} | {v:.8g} +- {se:.2g} | {z:+.2f} |")

    # 3: train on both devices
    files = {}
    for device, extra in (("true", []), ("fitted", [f"noise.file={noise_file}"])):
        for rule in RULES:
            for seed in seeds:
                cfg = load_config(SPEC, plan["sets"] + extra + [
                    f"name=g-{device}-{rule}-s{seed}", f"rule.name={rule}", f"seed={seed}"])
                result, path = run(cfg.to_dict(), runs, overwrite=True)
                files.setdefault((rule, device), []).append(path)
                print(f"{device:>6} {rule:>4} seed {seed}: {result.status}", flush=True)

    # 4: compare
    lines += ["", "| rule | device | final test accuracy (mean +- std, n) |", "|---|---|---|"]
    for (rule, device), paths in files.items():
        row = summarize(paths, by=None)[0]
        lines.append(f"| {rule} | {device} | {row['mean']:.4f} +- {row['std']:.4f} "
                     f"({row['n']}) |")
    table = "\n".join(lines) + "\n"
    (results / "table.md").write_text(table)
    print(table)
    print(f"wrote {results / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
