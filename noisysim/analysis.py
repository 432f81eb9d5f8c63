"""Tables and curves from trajectory files (never re-runs training).

Runs are grouped by config values (dotted keys such as "rule.name"); each group reports the
mean and the sample standard deviation (ddof=1; 0 for a single run) over its runs, which
usually differ only in their seed. Files that cannot be used (missing, damaged, not a
trajectory, or without the requested metric) are skipped with a ``SkippedFileWarning`` that
names the file and the reason; when no file at all can be used a ``NoisysimError`` is raised.

    get_config_value(config, "rule.name")
    select_runs(paths, where=["rule.name=np"]) -> the files whose config matches
    summarize(paths, by=["rule.name"], metric="eval/test_accuracy", where=()) -> rows
    format_table(rows) -> str
    curves(paths, by=["rule.name"], metric="eval/test_accuracy", x="step") -> per group curves
    load_groups(paths, by, metric, where=()) -> [(by values, [(Trajectory, table), ...]), ...]

Runs are pooled into one group only when they differ in nothing but what makes them
replicates of one setting (``REPLICATE_KEYS``: the run's name, its seeds, where data lives,
the backend and memory-only settings). Any other config key that varies inside a group is
named and the analysis refuses (NoisysimError) unless it is grouped by (``by``) or the caller
pools on purpose (``pool=True``, the commands' ``--pool``).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from noisysim.dotted import lookup
from noisysim.errors import NoisysimError, one_line
from noisysim.record import INDEX_KEYS, INT_FILL, Trajectory, split_metric

STAT_KEYS = ("mean", "std", "n", "exploded", "files", "values", "x")


class AnalysisWarning(UserWarning):
    """Something in the data that the analysis worked around (the message says what)."""


class SkippedFileWarning(AnalysisWarning):
    """A trajectory file was left out of an analysis; the message names it and says why."""


# --------------------------------------------------------------------------------------
# config access


#: Value at a dotted path ("rule.name", "model.layers.0"); list items by index. Without a
#: default a missing key raises NoisysimError naming what is there instead (the one reader
#: of dotted keys, noisysim.dotted.lookup).
get_config_value = lookup


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"rule": {"name": "np"}} -> {"rule.name": "np"} (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------------------
# loading


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Paths as given; a directory stands for the *.h5 / *.hdf5 files below it (sorted)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix in (".h5", ".hdf5") and p.is_file()
            )
            if not found:
                text = f"skipping {path}: directory holds no .h5 files"
                warnings.warn(text, SkippedFileWarning, stacklevel=3)
            out.extend(found)
        else:
            out.append(path)
    return out


def _skip(path: Path, reason: str) -> None:
    text = f"skipping file: {reason}" if str(path) in reason else f"skipping {path}: {reason}"
    warnings.warn(text, SkippedFileWarning, stacklevel=4)


def _load(
    paths, metric: str, need: Sequence[str] = ()
) -> list[tuple[Trajectory, dict[str, np.ndarray]]]:
    """Open every file and read the metric's group; skip (with a warning) what cannot be used."""
    group, name = split_metric(metric)
    loaded, reasons, skipped = [], [], []
    files = expand_paths(paths)
    for path in files:
        try:
            traj = Trajectory(path)
            table = traj.table(group, [name, *need])  # raises naming what the group has
            if table[name].shape[0] == 0:
                raise NoisysimError(f"no rows in {group} yet (status {traj.status})")
        except (NoisysimError, OSError, RuntimeError, KeyError, ValueError) as err:
            # damaged files fail in h5py in many ways; none of them stops the analysis
            reason = one_line(err)
            reasons.append(reason if str(path) in reason else f"{path}: {reason}")
            skipped.append((path, reason))
            continue
        loaded.append((traj, table))
    if loaded:  # when nothing can be used, the error alone says why (one line)
        for path, reason in skipped:
            _skip(path, reason)
    else:
        if not files:
            raise NoisysimError("no trajectory files given")
        raise NoisysimError(
            f"none of the {len(files)} file(s) could be used for {metric}; first: {reasons[0]}"
        )
    return loaded


def select_runs(paths, where: Iterable[str] = ()) -> list[Path]:
    """The trajectory files under ``paths`` whose config matches every ``KEY=VALUE`` of
    ``where`` (``--where rule.name=np --where seed=0``): the one filter of ``summary``,
    ``plot`` and any other command that reads runs. VALUE is read as TOML (``0``, ``1e-3``,
    ``[64, 10]``, ``true``; other text is a string) and also matches a value whose text is
    the same (``--where seed=0`` and ``--where model.layers=[64,64,10]``). Files that cannot
    be read pass through (the caller skips them, saying why). A key no run has is an error
    with a suggestion; so is a filter that leaves no run."""
    from noisysim.config.layering import parse_override

    files = expand_paths(paths)
    conditions = [parse_override(w) for w in where]
    if not conditions:
        return files
    absent = object()
    kept, configs = [], []
    for path in files:
        try:
            config = Trajectory(path).config
        except (NoisysimError, OSError, RuntimeError, KeyError, ValueError):
            kept.append(path)
            continue
        configs.append(config)
        if all(_same(get_config_value(config, k, None), v) for k, v in conditions):
            kept.append(path)
    for key, _ in conditions:
        if configs and all(get_config_value(c, key, absent) is absent for c in configs):
            raise NoisysimError(f"--where {key}: no run's config has this key"
                                f"{_key_hint(key, configs)}")
    if configs and not kept:
        raise NoisysimError(f"no run matches --where {' --where '.join(where)} (of "
                            f"{len(configs)} runs); check the values with noisysim inspect")
    return kept


#: Words users reach for that the config spells otherwise (the network is ``model``).
_SYNONYMS = {"network": "model", "widths": "layers", "width": "layers", "net": "model",
             "optim": "optimizer", "lr": "optimizer.lr", "dataset": "data"}


def _key_hint(key: str, configs: Sequence[Mapping]) -> str:
    """What to say about a dotted key no config has: ``" (did you mean 'model.layers'?)"``
    (a synonym, a close spelling or the same last word) and where to see every key."""
    known = sorted({k for c in configs for k in flatten_config(c)})
    spelled = ".".join(_SYNONYMS.get(part, part) for part in key.split("."))
    close = [spelled] if spelled in known else []
    close = close or difflib.get_close_matches(key, known, n=3)
    close = close or [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:3]
    guess = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return f"{guess}; noisysim config show lists every key"


def _same(have: Any, want: Any) -> bool:
    """Whether a config value equals a --where value: equal values (a bool only equals a
    bool), or the same text (``"0.001"`` and 0.001, ``[64,64,10]`` and [64, 64, 10])."""
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    if have == want:
        return True
    return have is not None and _text(have) == _text(want)


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), default=str)


#: A run whose training loss ends above this multiple of its starting value has exploded
#: (it may still be finite, and then no divergence check catches it).
EXPLOSION_FACTOR = 10.0


def loss_explosion(traj: Trajectory) -> str | None:
    """'loss exploded: ...' when the run's last ``eval/train_loss`` (else ``train/loss``) is
    above ``EXPLOSION_FACTOR`` times its first, else None."""
    for group, name in (("eval", "train_loss"), ("train", "loss")):
        try:
            loss = traj.series(group, name)
        except (NoisysimError, KeyError):
            continue
        loss = np.asarray(loss, dtype=np.float64)
        loss = loss[np.isfinite(loss)]
        if loss.shape[0] < 2 or loss[0] <= 0:
            return None
        if loss[-1] > EXPLOSION_FACTOR * loss[0]:
            return (f"loss exploded: final {group}/{name} {loss[-1]:.4g} is "
                    f"{loss[-1] / loss[0]:.0f}x its start {loss[0]:.4g}; lower optimizer.lr")
        return None
    return None


def _as_list(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    if isinstance(by, str):
        return [by]
    return list(by)


def _group_runs(loaded, by: list[str]) -> list[tuple[dict[str, Any], list]]:
    """Group loaded runs by the values of the ``by`` keys, sorted by those values."""
    configs = [traj.config for traj, _ in loaded]
    for key in by:
        absent = object()
        if all(get_config_value(c, key, absent) is absent for c in configs):
            raise NoisysimError(f"no run's config has the key {key!r} to group by"
                                f"{_key_hint(key, configs)}")
    groups: dict[str, tuple[dict[str, Any], list]] = {}
    for run in loaded:
        values = {key: get_config_value(run[0].config, key, None) for key in by}
        ident = json.dumps([values[k] for k in by], sort_keys=True, default=str)
        groups.setdefault(ident, (values, []))[1].append(run)
    return sorted(groups.values(), key=lambda item: [_sort_key(item[0][k]) for k in by])


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, json.dumps(value, sort_keys=True, default=str))


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof=1) over axis 0; std 0 for one run. NaN propagates."""
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    return mean, std


# --------------------------------------------------------------------------------------
# summaries


def summarize(
    paths,
    by: str | Sequence[str] | None = ("rule.name",),
    metric: str = "eval/test_accuracy",
    where: Iterable[str] = (),
    *,
    pool: bool = False,
) -> list[dict[str, Any]]:
    """Final value of ``metric`` per run, aggregated per group of ``by`` config values,
    over the runs that match ``where`` (see ``select_runs``).

    Each row: the ``by`` values (None where a run's config lacks the key), ``mean``,
    ``std`` (ddof=1, 0 when n == 1), ``n``, ``exploded`` (runs whose loss exploded, see
    ``loss_explosion``; each also gets a warning), ``files`` and the per-file ``values``. A
    run's final value is its last recorded row, NaN included (a diverged run makes the mean
    NaN). Runs that differ in other keys are refused unless ``pool`` (see ``load_groups``).
    """
    by = _as_list(by)
    _, name = split_metric(metric)
    rows = []
    for values, runs in load_groups(paths, by, metric, where=where, pool=pool):
        finals = np.array([float(table[name][-1]) for _, table in runs])
        mean, std = _mean_std(finals)
        exploded = 0
        for traj, _ in runs:
            flag = loss_explosion(traj)
            if flag is not None:
                exploded += 1
                warnings.warn(f"{traj.path}: {flag}", AnalysisWarning, stacklevel=2)
        rows.append(
            {
                **values,
                "mean": float(mean),
                "std": float(std),
                "n": len(runs),
                "exploded": exploded,
                "files": [str(traj.path) for traj, _ in runs],
                "values": finals.tolist(),
            }
        )
    return rows


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], digits: int = 4) -> str:
    """Plain-text table: the group columns, then mean, std and n (numbers right-aligned)."""
    if not rows:
        return "(no runs)"
    columns = [k for k in rows[0] if k not in STAT_KEYS]
    columns += [k for k in ("mean", "std", "n") if k in rows[0]]
    if any(row.get("exploded") for row in rows):
        columns.append("exploded")
    cells = [[_cell(row.get(col), digits) for col in columns] for row in rows]
    numeric = [
        all(
            isinstance(row.get(col), (int, float)) and not isinstance(row.get(col), bool)
            for row in rows
        )
        for col in columns
    ]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]

    def line(items: Sequence[str]) -> str:
        parts = [
            item.rjust(w) if num else item.ljust(w) for item, w, num in zip(items, widths, numeric)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out.extend(line(c) for c in cells)
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# curves


def curves(
    paths,
    by: str | Sequence[str] | None = ("rule.name",),
    metric: str = "eval/test_accuracy",
    x: str = "step",
    where: Iterable[str] = (),
    *,
    pool: bool = False,
) -> list[dict[str, Any]]:
    """Mean and std over runs of ``metric`` against ``x`` (a series of the same group),
    over the runs that match ``where`` (see ``select_runs``).

    Runs are aligned by x value. A group's curve covers the x values that all its runs
    have (the common values; a shorter or still running run shortens the curve, with a
    warning). A run that logged the same x twice contributes its last row. Each entry: the
    ``by`` values, ``x``, ``mean``, ``std`` (ddof=1, 0 for one run), ``n``, ``files`` and
    ``values`` (runs x points). Runs that differ in other keys are refused unless ``pool``.
    """
    by = _as_list(by)
    _, name = split_metric(metric)
    out = []
    for values, runs in load_groups(paths, by, metric, need=(x,), where=where,
                                    pool=pool):
        per_run = [run_curve(table, name, x) for _, table in runs]
        common = per_run[0][0]
        for xs, _ in per_run[1:]:
            common = np.intersect1d(common, xs)
        if any(xs.shape[0] != common.shape[0] for xs, _ in per_run):
            label = ", ".join(f"{k}={v}" for k, v in values.items()) or "all runs"
            warnings.warn(
                f"{label}: runs have different {x} values; using the {common.shape[0]} they share",
                AnalysisWarning,
                stacklevel=2,
            )
        stacked = np.stack([ys[np.searchsorted(xs, common)] for xs, ys in per_run])
        stacked = stacked.astype(np.float64)
        mean, std = _mean_std(stacked)
        out.append(
            {
                **values,
                "x": common,
                "mean": mean,
                "std": std,
                "n": len(runs),
                "files": [str(traj.path) for traj, _ in runs],
                "values": stacked,
            }
        )
    return out


def run_curve(table: Mapping[str, np.ndarray], name: str, x: str = "step"):
    """(x values ascending, ``name`` values) of one run's table; rows without an x value
    are dropped and an x logged twice keeps its last row (e.g. after a resume)."""
    xs, ys = table[x], table[name]
    keep = xs != INT_FILL if x in INDEX_KEYS else np.isfinite(xs)
    xs, ys = xs[keep], ys[keep]
    rev_x, rev_idx = np.unique(xs[::-1], return_index=True)
    return rev_x, ys[::-1][rev_idx]


def group_label(entry: Mapping[str, Any]) -> str:
    """"np" for one grouping key, "rule.name=np, seed=1" for several, "all runs" for none."""
    keys = [k for k in entry if k not in STAT_KEYS]
    if len(keys) == 1:
        return _cell(entry[keys[0]], 6)
    return ", ".join(f"{k}={_cell(entry[k], 6)}" for k in keys) or "all runs"


# --------------------------------------------------------------------------------------
# groups without silent pooling


#: Config keys in which the runs of one group may differ: what makes runs replicates (the
#: run's name and seed; any other key ending in ".seed" too) and what cannot change their
#: numbers (backend, where data lives, evaluation batch size, checkpoint interval).
REPLICATE_KEYS = ("name", "seed", "backend.name", "data.data_dir", "data.mirror",
                  "data.download", "train.eval_batch_size", "train.checkpoint_every")


def load_groups(
    paths,
    by: str | Sequence[str] | None,
    metric: str,
    need: Sequence[str] = (),
    *,
    where: Iterable[str] = (),
    pool: bool = False,
) -> list[tuple[dict[str, Any], list[tuple[Trajectory, dict[str, np.ndarray]]]]]:
    """Readable runs with ``metric`` (and the series in ``need``) that match ``where`` (see
    ``select_runs``), grouped by ``by``.

    Each group: (the ``by`` values, [(Trajectory, its table), ...]), sorted by those values;
    unreadable files are skipped with a ``SkippedFileWarning``. Runs of one group that differ
    in a config key other than the ``by`` keys and ``REPLICATE_KEYS`` raise NoisysimError
    naming the key and its values, unless ``pool`` (then an ``AnalysisWarning`` says what was
    pooled).
    """
    by = _as_list(by)
    groups = _group_runs(_load(select_runs(paths, where), metric, need), by)
    mixed = [(values, varying_keys([t.config for t, _ in runs], by)) for values, runs in groups]
    mixed = [(values, keys) for values, keys in mixed if keys]
    if mixed:
        values, keys = mixed[0]
        label = group_label(values) if values else "all runs"
        what = "; ".join(f"{k} ({', '.join(map(_cell_short, vals))})" for k, vals in keys[:3])
        more = f" and {len(keys) - 3} more keys" if len(keys) > 3 else ""
        others = f" (and {len(mixed) - 1} more groups)" if len(mixed) > 1 else ""
        text = f"runs in group {label}{others} differ in {what}{more}"
        if not pool:
            flags = " ".join(f"--by {k}" for k, _ in keys[:3])
            raise NoisysimError(f"{text}; group by them ({flags}) or pool them on purpose "
                                "(--pool)")
        warnings.warn(f"pooling {text}", AnalysisWarning, stacklevel=2)
    return groups


def _is_replicate_key(key: str) -> bool:
    return key in REPLICATE_KEYS or key.endswith(".seed")


def varying_keys(configs: Sequence[Mapping], by: Sequence[str] = ()) -> list[tuple[str, list]]:
    """Config keys (dotted) whose values differ among ``configs``, with their distinct values.

    A key missing from some configs varies (its value there is None). Keys under a ``by``
    key (``rule`` covers ``rule.name``) and ``REPLICATE_KEYS`` are left out.
    """
    flat = [flatten_config(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    out = []
    for key in keys:
        if _is_replicate_key(key) or any(key == b or key.startswith(b + ".") for b in by):
            continue
        seen: dict[str, Any] = {}
        for f in flat:
            value = f.get(key)
            seen.setdefault(json.dumps(value, sort_keys=True, default=str), value)
        if len(seen) > 1:
            out.append((key, sorted(seen.values(), key=_sort_key)))
    return out


def _cell_short(value: Any) -> str:
    return "absent" if value is None else _cell(value, 6)
