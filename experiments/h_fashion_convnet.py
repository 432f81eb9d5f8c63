"""h. Fashion-MNIST convnet: bp, dbp, np, dnp, anp, danp without and with intrinsic
Gaussian node noise, 3 seeds; BP alone at its own learning rate for longer (the "bp
reference"); NP, ANP and DANP at a constant learning rate, without and with the noise
(spec: h_fashion_convnet.toml; issue 14).

Run it with ``python experiments/reproduce.py h`` (``--tiny``, ``--full``, ``--estimate``).
"""

from __future__ import annotations

from pathlib import Path

from common import (TINY_DIGITS, Context, Plan, Variant, accuracy_table, files_where,
                    plot_curves, write_report)

KEY = "h"
TITLE = "Fashion-MNIST convnet, NP family with and without decorrelation and device noise"

RULES = ["bp", "dbp", "np", "dnp", "anp", "danp"]
NOISE = ["0", "0.01"]  # noise.sigma of the intrinsic Gaussian node noise
# BP alone, noise-free, at the learning rate that suits it, for 10 epochs: the network's
# accuracy when trained well (the grid's budget and lr are the NP family's)
REFERENCE_LR = 1e-3
REFERENCE = ["noise.sigma=0", "train.epochs=10"]
# NP, ANP and DANP at a constant learning rate, without and with the intrinsic noise: the
# cosine schedule, which BP needs to settle, takes DANP's lead over ANP away within the
# grid's 3 epochs


def plan(size: str) -> Plan:
    grid = Variant({"rule.name": RULES, "noise.sigma": NOISE})
    reference = Variant({"rule.name": ["bp"], "optimizer.lr": [str(REFERENCE_LR)]},
                        sets=list(REFERENCE))
    constant = Variant({"rule.name": ["np", "anp", "danp"], "noise.sigma": NOISE,
                        "optimizer.schedule": ["constant"]})
    if size == "tiny":
        tiny = TINY_DIGITS + ['model.layers=[{conv = 4, kernel = 3, padding = 1}, '
                              '{pool = "max", size = 2}, {dense = 10}]']
        reference.sets = ["noise.sigma=0"]
        return Plan(tiny, [0], [grid, reference, constant],
                    "tiny: digits 8x8x1, conv 4 3x3 - max 2 - dense 10, 12 updates")
    if size == "full":
        return Plan(["train.epochs=10"], [0, 1, 2, 3, 4], [grid, reference, constant],
                    "full: as the default, 10 epochs (6,000 updates), 5 seeds")
    return Plan([], [0, 1, 2], [grid, reference, constant],
                "Fashion-MNIST, conv 16 5x5 - max 2 - conv 32 5x5 - max 2 - dense 128 - "
                "dense 10, batch 100, Adam 3e-4 with a cosine schedule for every rule, "
                "decorrelation lr 1e-3 on every 4th patch row, sigma 1e-3, intrinsic noise "
                "sigma 0 or 0.01, 3 epochs (1,800 updates), 3 seeds; the bp reference: Adam "
                f"{REFERENCE_LR:g} (cosine), no intrinsic noise, 10 epochs (6,000 updates); "
                "np, anp and danp at a constant learning rate, intrinsic noise sigma 0 or "
                "0.01")


def analyse(ctx: Context) -> list[Path]:
    reference = files_where(ctx.files, "optimizer.lr", REFERENCE_LR)
    constant = files_where(ctx.files, "optimizer.schedule", None)  # "constant" is not stored
    grid = [f for f in ctx.files if f not in reference and f not in constant]
    figs = []
    for value in (0.0, 0.01):
        sub = files_where(grid, "noise.sigma", value)
        if sub:
            figs.append(plot_curves(sub, ctx.results / f"test_accuracy_{value}.png",
                                    by="rule.name", x="epoch",
                                    title=f"convnet, intrinsic noise sigma {value}").path)
    table, _ = accuracy_table(grid, ["noise.sigma", "rule.name"])
    body = ["Final test accuracy (noise-free inference) of the convnet, mean ± std [95% t "
            "interval of the mean] over seeds; noise.sigma is the std of the intrinsic "
            "Gaussian node noise (0: none).", "", table]
    if reference:
        ref_table, _ = accuracy_table(reference, ["rule.name", "optimizer.lr"])
        body += ["", f"The bp reference (Adam {REFERENCE_LR:g} with a cosine schedule, no "
                 "intrinsic noise, its own number of epochs):", "", ref_table]
    if constant:
        const_table, _ = accuracy_table(constant, ["noise.sigma", "rule.name"])
        body += ["", "NP, ANP and DANP at a constant learning rate (the grid's epochs):", "",
                 const_table]
    write_report(ctx, body, figs)
    return figs
