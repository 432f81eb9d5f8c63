"""c. Fashion-MNIST MLP: every rule with and without decorrelation, 3 seeds (spec:
c_fashion_mlp.toml).

Run it with ``python experiments/reproduce.py c`` (``--tiny``, ``--full``).
"""

from __future__ import annotations

from pathlib import Path

from common import (
    PAPER_CIFAR, PAPER_DBP, PAPER_SLOPE, TINY_DIGITS, Context, Plan, accuracy_table, by_rule,
    write_report,
)
from noisysim.plot import plot_curves

KEY = "c"
TITLE = "Fashion-MNIST MLP, every rule with and without decorrelation"


def plan(size: str) -> Plan:
    rules = ["bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp"]
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]"], [0], by_rule(rules),
                    "tiny: digits 64-32-32-10, 12 updates")
    if size == "full":
        return Plan(PAPER_CIFAR + PAPER_SLOPE, [0, 1, 2], by_rule(rules, PAPER_DBP),
                    "full: CIFAR-10 3072-1024-1024-1024-10, batch 1000, Adam 1e-4 (DBP 1e-3), "
                    "decorrelation lr 1e-3, sigma 1e-3, K = 1, 50 epochs, 3 seeds")
    return Plan([], [0, 1, 2], by_rule(rules),
                "Fashion-MNIST, 784-256-256-256-10, batch 100, Adam 3e-4 for every rule, "
                "decorrelation lr 1e-3, sigma 1e-3, 15 epochs (9,000 updates), 3 seeds")


def analyse(ctx: Context) -> list[Path]:
    figs = [plot_curves(ctx.files, ctx.results / "test_accuracy.png", by="rule.name",
                        x="epoch").path,
            plot_curves(ctx.files, ctx.results / "train_loss.png", metric="train/loss",
                        by="rule.name", x="step").path]
    table, _ = accuracy_table(ctx.files, ["rule.name"])
    body = ["Final test accuracy (noise-free inference), mean ± std [95% t interval of the mean] over seeds.", "", table]
    write_report(ctx, body, figs)
    return figs
