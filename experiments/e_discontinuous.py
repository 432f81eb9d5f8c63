"""e. Discontinuous activations: step and quantised networks, DANP against BP with and without
the straight-through surrogate (spec: e_discontinuous.toml).

Run it with ``python experiments/reproduce.py e`` (``--tiny``, ``--full``).
"""

from __future__ import annotations

from pathlib import Path

from common import (
    PAPER_CIFAR, TINY_DIGITS, Context, Plan, Variant, accuracy_per_value, accuracy_table,
    write_report,
)

KEY = "e"
TITLE = "step and quantised networks"


def plan(size: str) -> Plan:
    acts = {"model.activation": ["step", "quantize"]}
    variants = [Variant({"rule.name": ["danp"], **acts}),
                Variant({"rule.name": ["bp"], "rule.surrogate": ["ste", "none"], **acts})]
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]"], [0], variants,
                    "tiny: digits 64-32-32-10")
    if size == "full":
        return Plan(PAPER_CIFAR, [0, 1, 2], variants,
                    "full: CIFAR-10 3072-1024-1024-1024-10 with step / quantiser units, the "
                    "authors' settings (Adam 1e-4), DANP sigma 0.2, 50 epochs, 3 seeds")
    return Plan([], [0, 1, 2], variants,
                "Fashion-MNIST, 784-256-256-10, batch 100, Adam 1e-3, DANP sigma 0.2, "
                "15 epochs (9,000 updates), 3 seeds")


def analyse(ctx: Context) -> list[Path]:
    figs = accuracy_per_value(ctx, "model.activation", ("step", "quantize"),
                              ["rule.name", "rule.surrogate"], "{} hidden units")
    table, _ = accuracy_table(ctx.files, ["model.activation", "rule.name", "rule.surrogate"])
    body = ["DANP (no derivative needed) against BP with the straight-through surrogate "
            "(surrogate ste) and BP with the true derivative (surrogate none: zero almost "
            "everywhere, so only the output layer learns). Mean ± std [95% t interval of the mean] over seeds.", "", table]
    write_report(ctx, body, figs)
    return figs
