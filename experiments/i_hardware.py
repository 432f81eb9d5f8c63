"""i. Hardware realism: accuracy of bp, np, anp, danp as the read-out's ADC bits, the
device-to-device variability (of the noise amplitude; of the nodes' activation gain) and the
weight devices' states are swept (spec:
i_hardware.toml; the non-idealities of noisysim.hardware).

Run it with ``python experiments/reproduce.py i`` (``--tiny``, ``--full``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from common import (
    TINY_DIGITS, Context, Plan, by_rule, figure, md_table, pm, rule_key, style, write_report,
)
from noisysim.analysis import summarize

KEY = "i"
TITLE = "ADC bits, variability and weight states"

RULES = ["bp", "np", "anp", "danp"]
#: NP's own perturbation: 3x the device's 1% noise. NP credits the whole loss change to the
#: perturbation it injected, so device noise of comparable size is pure estimator noise; at
#: the spec's sigma 1e-3 (ten times below the device noise) it does not learn even on the
#: ideal chip, at 0.03 it does (0.86 on the ideal chip, 3 seeds).
PER_RULE = {"np": ["rule.sigma=0.03"]}
#: (sweep name, config key the analysis groups by, values (0: the ideal end), the overrides
#: of one value)
SWEEPS = (
    ("adc", "measurement.bits", [0, 12, 8, 6, 4],
     lambda v: [f"measurement.bits={v}", f"measurement.loss_bits={v}"]),
    ("variability", "noise.variability.amplitude", [0.0, 0.1, 0.3, 1.0],
     lambda v: [f"noise.variability.amplitude={v}"]),
    ("gain", "noise.variability.gain", [0.0, 0.1, 0.3, 1.0],
     lambda v: [f"noise.variability.gain={v}"]),
    ("states", "optimizer.states", [0, 256, 64, 16],
     lambda v: (["optimizer.device=constant_step", f"optimizer.states={v}"] if v else [])),
)


def plan(size: str) -> Plan:
    variants = [dataclasses.replace(variant, sets=sets(v) + variant.sets,
                                    pre=[f"name=i-{name}-{v}"])
                for name, _, values, sets in SWEEPS for v in values
                for variant in by_rule(RULES, PER_RULE)]
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,16,10]"], [0], variants,
                    "tiny: digits 64-16-10, 2 epochs")
    # default: 204 runs, about 12 minutes with 2 workers on 2 cores; full: 5 seeds (the MTJ
    # study's count)
    seeds = [0, 1, 2, 3, 4] if size == "full" else [0, 1, 2]
    return Plan([], seeds, variants,
                "digits 64-64-10, 1% Gaussian device noise, injected sigma 1e-3 (np: 0.03), "
                f"Adam 3e-3, batch 64, 30 epochs (720 updates), {len(seeds)} seeds")


def _value(row, key):
    v = row.get(key)
    return 0 if v is None else v  # the key is absent where the non-ideality is off


def analyse(ctx: Context) -> list[Path]:
    ctx.results.mkdir(parents=True, exist_ok=True)
    fig, axes = figure(ncols=len(SWEEPS), width=5.0 * len(SWEEPS))
    body = ["Final test accuracy (noise-free inference) of each rule as one hardware "
            "non-ideality is made worse (0 = ideal: floating-point read-out, identical "
            "devices, floating-point weights). Mean ± std [95% t interval of the mean] over seeds.", ""]
    csv = ["sweep,value,rule,mean,std,n"]
    for ax, (name, key, values, _) in zip(axes, SWEEPS):
        files = [f for f in ctx.files if f"i-{name}-" in Path(f).name]
        if not files:
            continue
        rows = summarize(files, by=["rule.name", key], metric="eval/test_accuracy")
        cell = {(r["rule.name"], _value(r, key)): r for r in rows}
        rules = sorted({r["rule.name"] for r in rows}, key=rule_key)
        xs = list(range(len(values)))
        for rule in rules:
            got = [(i, cell[rule, v]) for i, v in enumerate(values) if (rule, v) in cell]
            ax.errorbar([i for i, _ in got], [c["mean"] for _, c in got],
                        [c["std"] for _, c in got], marker="o", capsize=3, label=rule,
                        **style(rule))
            csv += [f"{name},{values[i]},{rule},{c['mean']!r},{c['std']!r},{c['n']}"
                    for i, c in got]
        ax.set_xticks(xs, [str(v) if v else "ideal" for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel("final test accuracy")
        ax.grid(True, alpha=0.3)
        table = [[str(v) if v else "ideal"] + [pm(cell[r, v]["mean"], cell[r, v]["std"],
                                                   cell[r, v]["n"]) if (r, v) in cell else "-"
                                                for r in rules] for v in values]
        body += [f"**{key}**", "", md_table([key] + rules, table), ""]
    axes[0].legend(fontsize="small")
    fig.suptitle("accuracy under hardware non-idealities", fontsize="medium")
    fig_path = ctx.results / "hardware.png"
    fig.savefig(fig_path, dpi=120)
    (ctx.results / "hardware.csv").write_text("\n".join(csv) + "\n")
    write_report(ctx, body, [fig_path])
    return [fig_path]
