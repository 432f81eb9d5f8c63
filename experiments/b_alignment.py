"""b. Gradient alignment per layer: cosine between each rule's batch estimate and the exact
gradient of the same batch, every rule (spec: b_alignment.toml).

Run it with ``python experiments/reproduce.py b`` (``--tiny``, ``--full``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common import (
    PAPER_CIFAR, PAPER_DBP, PAPER_SLOPE, RULE_ORDER, TINY_DIGITS, Context, Plan, by_rule, figure,
    md_table, pm, rule_key, style, write_report,
)
from noisysim.analysis import curves
from noisysim.record import Trajectory

KEY = "b"
TITLE = "gradient alignment per layer"


def plan(size: str) -> Plan:
    rules = list(RULE_ORDER)
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]", "train.alignment_every=2"],
                    [0], by_rule(rules), "tiny: digits 64-32-32-10, 12 updates")
    if size == "full":
        return Plan(PAPER_CIFAR + PAPER_SLOPE + ["train.alignment_every=25"], [0, 1, 2],
                    by_rule(rules, PAPER_DBP),
                    "full: CIFAR-10 3072-1024-1024-1024-10, the authors' settings, 50 epochs")
    return Plan([], [0, 1, 2], by_rule(rules),
                "Fashion-MNIST, 784-256-256-256-10, batch 100, Adam 3e-4, decorrelation lr "
                "1e-3, 3,000 updates, alignment every 25, 3 seeds")


def analyse(ctx: Context) -> list[Path]:
    files = ctx.files
    n_layers = len(Trajectory(files[0]).config["model"]["layers"]) - 1
    fig, axes = figure(n_layers, width=3.6 * n_layers, height=4.0)
    per = {}  # rule -> layer -> per-run time-averaged cosine
    for l in range(n_layers):
        metric = f"alignment/layer_{l}"
        for entry in sorted(curves(files, by="rule.name", metric=metric, x="step"),
                            key=lambda e: rule_key(e["rule.name"])):
            rule = entry["rule.name"]
            axes[l].plot(entry["x"], entry["mean"], label=rule, **style(rule))
        for f in files:
            t = Trajectory(f)
            v = t.series("alignment", f"layer_{l}")
            per.setdefault(t.config["rule"]["name"], {}).setdefault(l, []).append(
                float(np.nanmean(v)) if v.size else math.nan)
        axes[l].set_title(f"layer {l}" + (" (output)" if l == n_layers - 1 else ""),
                          fontsize="medium")
        axes[l].set_xlabel("update")
        axes[l].set_ylim(-0.1, 1.05)
        axes[l].grid(True, alpha=0.3)
    axes[0].set_ylabel("cosine(estimate, exact gradient)")
    axes[-1].legend(fontsize="small", ncol=2)
    ctx.results.mkdir(parents=True, exist_ok=True)
    fig_path = ctx.results / "alignment.png"
    fig.savefig(fig_path, dpi=120)
    rows, csv = [], ["rule,layer,mean_cosine,std,n,angle_deg"]
    for rule in sorted(per, key=rule_key):
        row = [rule]
        for l in range(n_layers):
            v = np.array(per[rule][l])
            m, s = float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0
            ang = math.degrees(math.acos(max(-1.0, min(1.0, m)))) if not math.isnan(m) else math.nan
            row.append(pm(m, s, len(v)) + f" ({ang:.0f}°)")
            csv.append(f"{rule},{l},{m!r},{s!r},{len(v)},{ang!r}")
        rows.append(row)
    (ctx.results / "alignment.csv").write_text("\n".join(csv) + "\n")
    body = ["Cosine similarity between each rule's batch estimate and the exact gradient of "
            "the same batch, averaged over the run (every alignment row), then mean ± std "
            "[95% t interval of the mean] over seeds; the angle is arccos of the mean cosine.", "",
            md_table(["rule"] + [f"layer {l}" for l in range(n_layers)], rows)]
    write_report(ctx, body, [fig_path])
    return [fig_path]
