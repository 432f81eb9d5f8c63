"""h. Fashion-MNIST convnet: bp, dbp, np, dnp, anp, danp without and with intrinsic
Gaussian node noise, 3 seeds (spec: h_fashion_convnet.toml; issue 14).

Run it with ``python experiments/reproduce.py h`` (``--tiny``, ``--full``, ``--estimate``).
"""

from __future__ import annotations

from pathlib import Path

from common import TINY_DIGITS, Context, Plan, Variant, accuracy_per_value, accuracy_table, write_report

KEY = "h"
TITLE = "Fashion-MNIST convnet, NP family with and without decorrelation and device noise"

RULES = ["bp", "dbp", "np", "dnp", "anp", "danp"]
NOISE = ["0", "0.01"]  # noise.sigma of the intrinsic Gaussian node noise


def plan(size: str) -> Plan:
    grid = {"rule.name": RULES, "noise.sigma": NOISE}
    if size == "tiny":
        return Plan(TINY_DIGITS + ['model.layers=[{conv = 4, kernel = 3, padding = 1}, '
                                   '{pool = "max", size = 2}, {dense = 10}]'],
                    [0], [Variant(grid)], "tiny: digits 8x8x1, conv 4 3x3 - max 2 - dense 10, "
                                          "12 updates")
    if size == "full":
        return Plan(["train.epochs=30"], [0, 1, 2], [Variant(grid)],
                    "full: as the default, 30 epochs (18,000 updates)")
    return Plan([], [0, 1, 2], [Variant(grid)],
                "Fashion-MNIST, conv 16 5x5 - max 2 - conv 32 5x5 - max 2 - dense 10, batch "
                "100, Adam 3e-4 for every rule, decorrelation lr 1e-3 on every 4th patch row, "
                "sigma 1e-3, intrinsic noise sigma 0 or 0.01, 10 epochs (6,000 updates), "
                "3 seeds")


def analyse(ctx: Context) -> list[Path]:
    figs = accuracy_per_value(ctx, "noise.sigma", [0.0, 0.01], "rule.name",
                              "convnet, intrinsic noise sigma {}")
    table, _ = accuracy_table(ctx.files, ["noise.sigma", "rule.name"])
    body = ["Final test accuracy (noise-free inference) of the convnet, mean ± std [95% t "
            "interval of the mean] over seeds; noise.sigma is the std of the intrinsic "
            "Gaussian node noise (0: none).", "", table]
    write_report(ctx, body, figs)
    return figs
