"""noisysim.dotted: the one dotted-key reader and the one config comparison."""

from __future__ import annotations

import json
import math

import pytest

from noisysim.dotted import first_difference, lookup
from noisysim.errors import NoisysimError

CONFIG = {"seed": 0, "rule": {"name": "np", "sigma": 1e-3},
          "model": {"layers": [64, 32, 10]}, "noise": {"model": "gaussian", "mean": math.nan}}


def test_lookup_walks_tables_and_list_indices():
    assert lookup(CONFIG, "rule.name") == "np"
    assert lookup(CONFIG, "model.layers.1") == 32
    assert lookup(CONFIG, "model.layers.-1") == 10
    assert lookup(CONFIG, "model.layers.3", None) is None
    assert lookup(CONFIG, "rule.samples", "absent") == "absent"


def test_lookup_names_the_closest_key_and_what_the_table_holds():
    with pytest.raises(NoisysimError) as err:
        lookup(CONFIG, "rule.sigmaa")
    assert str(err.value) == ("the config has no key 'rule.sigmaa' (did you mean "
                              "'rule.sigma'?); [rule] holds name, sigma")
    with pytest.raises(NoisysimError, match=r"no key 'rules.name'.*the top level holds seed"):
        lookup(CONFIG, "rules.name")
    with pytest.raises(NoisysimError, match=r"\[model.layers\] holds a list"):
        lookup(CONFIG, "model.layers.x")


def test_first_difference_of_equal_configs_is_none_nan_included():
    # a config stored as JSON and read back holds NaN where it did: that is no difference
    stored = json.loads(json.dumps(CONFIG))
    assert stored["noise"]["mean"] is not CONFIG["noise"]["mean"]
    assert first_difference(CONFIG, stored) is None
    assert first_difference([math.nan, 1.0], [float("nan"), 1.0]) is None


@pytest.mark.parametrize("change, where", [
    (lambda c: c["rule"].update(sigma=2e-3), "rule.sigma"),
    (lambda c: c["rule"].pop("sigma"), "rule.sigma"),
    (lambda c: c["rule"].update(samples=2), "rule.samples"),
    (lambda c: c["model"]["layers"].__setitem__(1, 16), "model.layers.1"),
    (lambda c: c["model"]["layers"].append(5), "model.layers"),
    (lambda c: c["noise"].update(mean=0.0), "noise.mean"),
    (lambda c: c.update(seed=1), "seed"),
])
def test_first_difference_names_the_first_changed_key(change, where):
    other = json.loads(json.dumps(CONFIG))
    change(other)
    assert first_difference(CONFIG, other) == where
    assert first_difference(other, CONFIG) == where


def test_first_difference_of_values_at_the_root():
    assert first_difference(1, 2) == "(root)"
    assert first_difference({"a": 1}, [1]) == "(root)"
