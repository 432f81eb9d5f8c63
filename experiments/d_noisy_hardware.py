"""d. Noisy hardware: two noisy passes with simulated sMTJ and Bernoulli device noise (spec:
d_noisy_hardware.toml; the noise models come from models/mtj_mlp_*.toml).

Run it with ``python experiments/reproduce.py d`` (``--tiny``, ``--full``).
"""

from __future__ import annotations

from pathlib import Path

from common import (
    MODELS, TINY_DIGITS, Context, Plan, Variant, accuracy_per_value, accuracy_table,
    write_report,
)

KEY = "d"
TITLE = "two noisy passes on sMTJ and Bernoulli hardware"


def plan(size: str) -> Plan:
    smtj, bern = str(MODELS / "mtj_mlp_smtj.toml"), str(MODELS / "mtj_mlp_bernoulli.toml")
    np_sets = ["rule.sigma=1e-3"]  # NP needs a known injected perturbation
    if size == "full":
        # MTJ study, CIFAR-10: forward lr 2.4414e-5; decorrelation lr per noise model.
        # The study's epoch count is not in the paper: 50, as the paper's CIFAR-10 runs.
        common = ["data.name=cifar10", "data.n_train=50000", "data.n_test=10000",
                  "model.layers=[3072,500,500,500,10]", "optimizer.lr=2.4414e-5",
                  "train.epochs=50"]
        noises = [("d-smtj", smtj, "1.9073e-7"), ("d-bernoulli", bern, "7.6294e-7")]
        seeds, notes = [0, 1, 2, 3, 4], ("full: CIFAR-10 3072-500-500-500-10, batch 64, Adam "
                                         "2.4414e-5, decorrelation lr 1.9073e-7 (sMTJ) / "
                                         "7.6294e-7 (Bernoulli), 50 epochs, 5 seeds")
    else:
        common = (TINY_DIGITS + ["model.layers=[64,32,32,32,10]", "train.batch_size=32"]
                  if size == "tiny" else ["model.layers=[784,256,256,256,10]"])
        noises = [("d-smtj", smtj, None), ("d-bernoulli", bern, None)]
        seeds = [0] if size == "tiny" else [0, 1, 2]
        notes = ("tiny: digits 64-32-32-32-10" if size == "tiny" else
                 "Fashion-MNIST, 784-256-256-256-10, batch 64, Adam 3e-4, "
                 "decorrelation lr 1e-3, 10 epochs (9,380 updates), 3 seeds")
    variants = []
    for name, model_file, dlr in noises:
        pre = [f"name={name}", f"model={model_file}"]
        own = [f"decorrelation.lr={dlr}"] if dlr else []
        variants.append(Variant({"rule.name": ["anp", "danp", "bp"]}, own, pre))
        variants.append(Variant({"rule.name": ["np"]}, own + np_sets, pre))
    return Plan(common, seeds, variants, notes)


def analyse(ctx: Context) -> list[Path]:
    figs = accuracy_per_value(ctx, "noise.model", ("smtj", "bernoulli"), "rule.name",
                              "two noisy passes, {} device noise")
    table, _ = accuracy_table(ctx.files, ["noise.model", "rule.name"])
    body = ["Two noisy passes (no clean pass); ANP/DANP learn from the device's noise alone "
            "(rule.sigma = 0), NP injects sigma 1e-3 on top of it, BP backpropagates through "
            "the first noisy pass. Final test accuracy of the noise-free network, mean ± std [95% t interval of the mean] "
            "over seeds.", "", table]
    write_report(ctx, body, figs)
    return figs
