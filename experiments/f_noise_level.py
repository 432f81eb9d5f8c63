"""f. Final accuracy against the level of the device's intrinsic Gaussian noise (spec:
f_noise_level.toml).

Run it with ``python experiments/reproduce.py f`` (``--tiny``, ``--full``).
"""

from __future__ import annotations

from pathlib import Path

from common import (
    PAPER_CIFAR, PAPER_SLOPE, TINY_DIGITS, Context, Plan, Variant, accuracy_per_value, figure,
    md_table, pm, rule_key, style, write_report,
)
from noisysim.analysis import summarize

KEY = "f"
TITLE = "accuracy against the intrinsic noise level"


def plan(size: str) -> Plan:
    rules = ["np", "anp", "danp"]
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]"], [0],
                    [Variant({"rule.name": rules, "noise.sigma": ["0", "0.01", "0.1"]})],
                    "tiny: digits 64-32-32-10")
    if size == "full":
        sig = ["0", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1", "3e-1"]
        return Plan(PAPER_CIFAR + PAPER_SLOPE, [0, 1, 2],
                    [Variant({"rule.name": rules, "noise.sigma": sig})],
                    "full: CIFAR-10 3072-1024-1024-1024-10, the authors' settings, 3 seeds")
    sig = ["0", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1"]
    return Plan([], [0, 1, 2], [Variant({"rule.name": rules, "noise.sigma": sig})],
                "Fashion-MNIST, 784-256-256-10, batch 100, Adam 3e-4, injected sigma 1e-3, "
                "10 epochs (6,000 updates), 3 seeds")


def analyse(ctx: Context) -> list[Path]:
    rows = summarize(ctx.files, by=["rule.name", "noise.sigma"], metric="eval/test_accuracy")
    sigmas = sorted({r["noise.sigma"] for r in rows})
    rules = sorted({r["rule.name"] for r in rows}, key=rule_key)
    cell = {(r["rule.name"], r["noise.sigma"]): r for r in rows}
    fig, (ax,) = figure()
    positive = [s for s in sigmas if s > 0]
    csv = ["rule,noise_sigma,mean,std,n"]
    for rule in rules:
        xs = [s for s in sigmas if (rule, s) in cell]
        ax.errorbar(xs, [cell[rule, s]["mean"] for s in xs], [cell[rule, s]["std"] for s in xs],
                    marker="o", capsize=3, label=rule, **style(rule))
        csv += [f"{rule},{float(s)!r},{cell[rule, s]['mean']!r},{cell[rule, s]['std']!r},"
                f"{cell[rule, s]['n']}" for s in xs]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("intrinsic noise std (gaussian noise.sigma; symlog axis)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("accuracy against the device's noise level", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ctx.results.mkdir(parents=True, exist_ok=True)
    fig_path = ctx.results / "accuracy_vs_noise.png"
    fig.savefig(fig_path, dpi=120)
    (ctx.results / "accuracy_vs_noise.csv").write_text("\n".join(csv) + "\n")
    table_rows = [[f"{s:g}"] + [pm(cell[r, s]["mean"], cell[r, s]["std"], cell[r, s]["n"])
                                if (r, s) in cell else "-" for r in rules] for s in sigmas]
    body = ["Final test accuracy (noise-free inference) against the std of the intrinsic "
            "Gaussian node noise; injected perturbation sigma 1e-3, clean reference pass. "
            "Mean ± std [95% t interval of the mean] over seeds.", "", md_table(["noise.sigma"] + rules, table_rows)]
    figs = [fig_path] + accuracy_per_value(ctx, "rule.name", rules, "noise.sigma",
                                           "{}: test accuracy by device noise level")
    write_report(ctx, body, figs)
    return figs
