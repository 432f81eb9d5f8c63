"""Run configuration: one TOML file describes one run; ``--set section.key=value`` overrides.

Entry points::

    cfg = load_config("run.toml", ["rule.sigma=1e-3", "model.layers=[64,32,10]"])
    cfg = load_config(None)                  # the embedded default (defaults/default.toml)
    cfg, origins = explain_config("run.toml", ["rule.sigma=1e-3"])   # + where each value came
                                             # from ("default (...)", "your file run.toml:7")
    cfg.rule.name, cfg.model.layers          # attribute access (read-only; lists are tuples)
    cfg.to_dict()                            # plain, JSON-able, every default filled in
    config_from_dict(cfg.to_dict()) == cfg   # programmatic configs, same validation
    resolve_value(cfg, "rule.sigma")         # one value by its dotted key

Layers, lowest first: the defaults of ``SCHEMA`` (and of the rule, noise model, optimiser,
dataset and activation themselves), the embedded default ``defaults/default.toml`` (under
every config: a file, a dict, ``--set`` alone; a file states only what it changes), the
config file (or dict), then each ``--set`` in order. A model file (``model = "models/x.toml"``
or a shipped one by name, ``model = "cifar_mlp"``, at the top level, or ``file = ...`` inside
``[model]``) sits just below the layer that names it: the including file overrides its keys, and
``--set model=models/x.toml`` overrides the file's ``[model]`` and ``[noise]``. A later layer
replaces single keys, never whole sections. When a later layer changes a component
(``rule.name``, ``noise.model``, ``optimizer.name``, ``data.name``, ``model.activation``), the
options that lower layers gave the *old* component and that the new one does not accept are
dropped, so ``--set rule.name=bp`` works on a file written for ``danp``; options it accepts
are kept, except the embedded default's own (its Gaussian ``sigma`` is not the sMTJ's).
An unset ``name`` is ``<rule>-<dataset>-<hash>`` (``validate.default_name``), so runs of
different configs never share a file.

Validation happens once, in ``load_config`` / ``config_from_dict``, before any work, and
stops at the first problem with a one-line ``NoisysimError`` naming the place (file and
line, or the ``--set`` argument), the dotted key, the value, what was expected and the fix.
The checks: unknown sections and keys (with "did you mean"), types, ranges, names of rules,
noise models, optimisers, datasets and activations (listing the valid ones), component
options (by building the rule, noise model, optimiser and activation, and by checking the
dataset's registered option names; no dataset is loaded), layer widths against the
dataset's input size and classes (from ``DATASET_SHAPES``), the loss against the task, and
the noise layers against the network depth.

Paths in a file (``model`` includes, ``noise.path``, ``data.data_dir``) are relative to that
file, then to the working directory; the resolved config holds them absolute. Paths given
with ``--set`` or in a dict are relative to the working directory.

The pipeline, one module per stage:

    schema.py     the keys users type (``SCHEMA``), their defaults and documentation
    sources.py    where each value came from (file and line, ``--set``, dict, defaults)
    layering.py   reading TOML and ``--set``, model-file includes, merging the layers
    validate.py   merged entries -> the resolved dict (types, ranges, components, cross-checks)
    frozen.py     ``Config`` and ``Section``: the read-only result
    load.py       ``load_config`` and ``config_from_dict``: read -> layer -> validate -> freeze
    values.py     TOML values in and out, and how a value is shown in a message
"""

from .frozen import Config, Section
from .layering import parse_override
from .load import config_from_dict, explain_config, load_config, resolve_value
from .schema import (
    BACKENDS,
    DATASET_SHAPES,
    DEFAULT_CONFIG,
    SCHEMA,
    SECTIONS,
    Key,
    schema_markdown,
)

__all__ = [
    "Config",
    "Section",
    "Key",
    "SCHEMA",
    "SECTIONS",
    "BACKENDS",
    "DATASET_SHAPES",
    "DEFAULT_CONFIG",
    "load_config",
    "explain_config",
    "config_from_dict",
    "resolve_value",
    "parse_override",
    "schema_markdown",
]
