"""Run configuration: defaults, --set overrides, includes, errors, round trips."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import tomllib

import numpy as np
import pytest

from noisysim.config import (
    SCHEMA,
    Config,
    config_from_dict,
    explain_config,
    load_config,
    parse_override,
    resolve_value,
    schema_markdown,
)
from noisysim.errors import NoisysimError
from noisysim.train import TrainSettings


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- the embedded default -----------------------------------------------------------------

def test_default_loads_and_resolves():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert re.fullmatch(r"danp-digits-[0-9a-f]{6}", cfg.name)   # stem + hash of the config
    assert cfg.rule.name == "danp" and cfg["rule"]["name"] == "danp"
    assert cfg.rule.decorrelated is True
    assert cfg.data.name == "digits"
    assert cfg.model.layers == (64, 64, 10)
    assert cfg.model.activation_params.slope == 0.01          # activation default filled in
    assert cfg.noise.model == "gaussian" and cfg.noise.mean == 0.0
    assert cfg.optimizer.beta2 == 0.999                        # optimiser default filled in
    assert cfg.data.flatten is True and cfg.data.dtype == "float32"
    assert cfg.train.batch_size == 64
    assert cfg.backend.name == "auto"
    d = cfg.to_dict()
    assert list(d) == ["name", "seed", "model", "noise", "rule", "decorrelation", "optimizer",
                       "data", "train", "backend"]
    assert set(d["train"]) == {f.name for f in dataclasses.fields(TrainSettings)}


def test_to_dict_is_json_and_round_trips():
    cfg = load_config(None)
    d = cfg.to_dict()
    again = json.loads(json.dumps(d))
    assert again == d
    cfg2 = config_from_dict(again)
    assert cfg2 == cfg and cfg2.to_dict() == d
    d["train"]["epochs"] = 999                                 # a copy, not a view
    assert cfg.train.epochs != 999


def test_to_toml_round_trips(tmp_path):
    cfg = load_config(None, ["model.activation_params.slope=0.2", "noise.layers=[0]"])
    text = cfg.to_toml()
    tomllib.loads(text)
    back = load_config(write(tmp_path / "r.toml", text))
    assert back.to_dict() == cfg.to_dict()


def test_config_is_read_only_and_pickles():
    cfg = load_config(None)
    with pytest.raises(AttributeError, match="read-only"):
        cfg.seed = 3
    with pytest.raises(AttributeError, match="read-only"):
        cfg.rule.sigma = 1.0
    with pytest.raises(TypeError):
        cfg.rule["sigma"] = 1.0
    with pytest.raises(AttributeError, match="did you mean 'sigma'"):
        cfg.rule.sigmaa
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_resolve_value():
    cfg = load_config(None)
    assert resolve_value(cfg, "rule.name") == "danp"
    assert resolve_value(cfg, "model.layers") == [64, 64, 10]
    assert resolve_value(cfg, "model.activation_params.slope") == 0.01
    assert resolve_value(cfg.to_dict(), "seed") == 0
    with pytest.raises(NoisysimError, match=r"no key 'rule.sigmaa' \(did you mean 'rule.sigma'"):
        resolve_value(cfg, "rule.sigmaa")


def test_experiment_builds_from_the_resolved_default():
    from noisysim.experiment import build

    b = build(load_config(None, ["train.epochs=1"]).to_dict())
    assert b.network.widths == (64, 64, 10) and b.decorrelator is not None
    assert b.rule.name == "danp" and b.settings.epochs == 1


# -- --set overrides ----------------------------------------------------------------------

@pytest.mark.parametrize("text, key, value", [
    ("rule.sigma=1e-2", "rule.sigma", 0.01),                       # float
    ("rule.sigma=1", "rule.sigma", 1.0),                           # int where a float goes
    ("train.epochs=3", "train.epochs", 3),                         # int
    ("model.bias=false", "model.bias", False),                     # bool
    ("model.layers=[64,32,10]", "model.layers", [64, 32, 10]),     # list
    ("rule.name=anp", "rule.name", "anp"),                         # bare word = string
    ('rule.name="np"', "rule.name", "np"),                         # quoted string
    ("name=2024-01-01", "name", "2024-01-01"),                     # a TOML date, kept as text
    ("seed=7", "seed", 7),                                         # top-level key
    ("model.activation_params={slope=0.1}", "model.activation_params.slope", 0.1),
    ("model.activation_params.slope=0.2", "model.activation_params.slope", 0.2),
    ("noise.layers=[0]", "noise.layers", [0]),
    ("data.n_train=100", "data.n_train", 100),
    ("optimizer.clip=1.0", "optimizer.clip", 1.0),
    ("backend.name=cpu", "backend.name", "cpu"),
])
def test_set_overrides(text, key, value):
    cfg = load_config(None, [text])
    assert resolve_value(cfg, key) == value
    assert type(resolve_value(cfg, key)) is type(value)


def test_later_set_wins_and_name_follows_components():
    cfg = load_config(None, ["train.epochs=3", "train.epochs=4", "data.name=teacher",
                             "model.loss=squared_error", "model.layers=[20, 8, 10]"])
    assert cfg.train.epochs == 4
    assert cfg.name.startswith("danp-teacher-")        # derived: the default sets no name
    assert cfg.data.n_inputs == 20                     # dataset defaults filled in


def test_changing_a_component_drops_options_of_the_old_one():
    # the default file gives danp a sigma and gaussian noise a sigma
    cfg = load_config(None, ["rule.name=bp"])
    assert "sigma" not in cfg.rule and cfg.rule.surrogate == "none"
    cfg = load_config(None, ["rule.name=np"])          # np accepts sigma: kept
    assert cfg.rule.sigma == 1e-3 and cfg.rule.decorrelated is False
    cfg = load_config(None, ["noise.model=telegraph", "noise.p_flip=0.1",
                             "noise.amplitude=0.05"])
    assert cfg.noise.to_dict() == {"model": "telegraph", "layers": "all",
                                   "hold_upstream": False, "p_flip": 0.1,
                                   "amplitude": 0.05, "offset": 0.0, "n_sources": 1}
    cfg = load_config(None, ["optimizer.name=sgd", "optimizer.momentum=0.9"])
    assert cfg.optimizer.to_dict() == {"name": "sgd", "lr": 3e-3, "momentum": 0.9,
                                       "nesterov": False, "weight_decay": 0.0}
    # options given together with the new name are still checked
    with pytest.raises(NoisysimError, match=r"--set rule.sigma=1: unknown key rule.sigma = 1"):
        load_config(None, ["rule.name=bp", "rule.sigma=1"])


def test_parse_override():
    assert parse_override("rule.sigma = 1e-3") == ("rule.sigma", 1e-3)
    assert parse_override("data.data_dir=/tmp/x") == ("data.data_dir", "/tmp/x")
    assert parse_override("name=") == ("name", "")


# -- including a model file ---------------------------------------------------------------

MODEL = """
[model]
layers = [64, 32, 10]
activation = "tanh"
bias = false

[noise]
model = "telegraph"
p_flip = 0.1
amplitude = 0.05
"""


def test_include_model_file_with_overrides(tmp_path, monkeypatch):
    write(tmp_path / "models" / "small.toml", MODEL)
    run = write(tmp_path / "exp" / "run.toml", """
model = "../models/small.toml"
seed = 3

[noise]
amplitude = 0.2
layers = [1]
""")
    monkeypatch.chdir(tmp_path / "models")      # relative to the file, not the CWD
    cfg = load_config(run)
    assert cfg.model.layers == (64, 32, 10) and cfg.model.activation == "tanh"
    assert cfg.model.bias is False
    assert cfg.model.activation_params.to_dict() == {}
    assert cfg.noise.model == "telegraph" and cfg.noise.p_flip == 0.1
    assert cfg.noise.amplitude == 0.2 and cfg.noise.layers == (1,)
    cfg = load_config(run, ["model.layers=[64,16,10]", "noise.amplitude=0.3"])
    assert cfg.model.layers == (64, 16, 10) and cfg.noise.amplitude == 0.3
    # the include is resolved away: the plain dict stands alone
    assert config_from_dict(cfg.to_dict()) == cfg


def test_include_inside_model_table_lets_the_file_override_model_keys(tmp_path, monkeypatch):
    write(tmp_path / "models" / "small.toml", MODEL)
    run = write(tmp_path / "run.toml", """
[model]
file = "models/small.toml"
activation = "relu"
""")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(run)
    assert cfg.model.activation == "relu" and cfg.model.layers == (64, 32, 10)
    # --set can include from the working directory too
    cfg = load_config(None, ["model=models/small.toml"])
    assert cfg.model.activation == "tanh" and cfg.model.layers == (64, 32, 10)
    # a --set include sits above the file: its [noise] replaces the file's gaussian noise
    assert cfg.noise.model == "telegraph" and "sigma" not in cfg.noise


def test_include_errors(tmp_path):
    run = write(tmp_path / "run.toml", 'model = "models/none.toml"\n')
    with pytest.raises(NoisysimError, match=r"run.toml:1: model = 'models/none.toml': "
                                            r"model file not found"):
        load_config(run)
    write(tmp_path / "models" / "bad.toml", MODEL + "\n[train]\nepochs = 3\n")
    run = write(tmp_path / "run2.toml", 'model = "models/bad.toml"\n')
    with pytest.raises(NoisysimError, match=r"bad.toml:12: a model file may hold only "
                                            r"\[model\], \[noise\], \[measurement\] and the "
                                            r"weight device under \[optimizer\], found \[train\]"):
        load_config(run)


def test_trace_path_relative_to_the_config_file(tmp_path, monkeypatch):
    np.save(tmp_path / "trace.npy", np.linspace(-1, 1, 50))
    run = write(tmp_path / "run.toml", '[noise]\nmodel = "trace"\npath = "trace.npy"\n')
    monkeypatch.chdir("/")
    cfg = load_config(run)
    assert cfg.noise.path == str(tmp_path / "trace.npy")
    assert len(cfg.noise.sha256) == 64 and "data" not in cfg.noise
    assert config_from_dict(cfg.to_dict()) == cfg


# -- errors: one line naming place, key, value, expectation and fix ----------------------

def check_error(tmp_path, text, overrides=(), *, match):
    path = write(tmp_path / "run.toml", text)
    with pytest.raises(NoisysimError, match=match) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_wrong_type(tmp_path):
    check_error(tmp_path, '[train]\nepochs = "10"\n', match=re.escape(
        "run.toml:2: train.epochs must be an integer, got '10' (a string): write epochs = 10 "
        "without quotes"))
    check_error(tmp_path, '[model]\nbias = "true"\n', match=re.escape(
        "run.toml:2: model.bias must be true or false, got 'true' (a string): write bias = "
        "true without quotes"))
    check_error(tmp_path, '[model]\nlayers = 64\n',
                match=r"run.toml:2: model.layers must be a list of integers, got 64")
    check_error(tmp_path, '[rule]\nsigma = "1e-3"\n',
                match=r"run.toml:2: rule.sigma = '1e-3': .*must be a number.*write sigma = "
                      r"1e-3 without quotes")
    check_error(tmp_path, "name = 5\n", match=r'run.toml:1: name must be a string, got 5 '
                                              r'\(an integer\): write name = "5" in quotes')
    check_error(tmp_path, "[train]\nepochs = 2.5\n",
                match=r"train.epochs must be an integer, got 2.5 \(a float\)")
    check_error(tmp_path, "train = 5\n", match=r"run.toml:1: train must be a table")


def test_out_of_range(tmp_path):
    check_error(tmp_path, "[train]\nepochs = 0\n",
                match=re.escape("run.toml:2: train.epochs must be in [1, inf], got 0"))
    check_error(tmp_path, "[decorrelation]\nkappa = 2\n",
                match=re.escape("run.toml:2: decorrelation.kappa must be in [0, 1], got 2.0"))
    check_error(tmp_path, "[optimizer]\nlr = 0\n",
                match=r"run.toml:2: optimizer.lr must be in \(0, inf\], got 0.0")
    check_error(tmp_path, "seed = -1\n", match=r"run.toml:1: seed must be in 0..2\*\*63-1, got -1")
    check_error(tmp_path, "[noise]\nmodel = 'gaussian'\nsigma = -0.5\n",
                match=r"run.toml:3: noise.sigma = -0.5: sigma of gaussian noise must be in "
                      r"\[0, inf\]")
    check_error(tmp_path, "[model]\nactivation_params = {slope = 2}\n",
                match=r"run.toml:2: model.activation_params.slope = 2: leaky_relu slope must "
                      r"be in \[0, 1\]")
    check_error(tmp_path, "[data]\nn_train = 5000\n",
                match=r"data.n_train = 5000 exceeds the 1500 examples of 'digits'")
    check_error(tmp_path, "[data]\nvalidation = 1.5\n",
                match=r"run.toml:2: data.validation must be in \[0, 1\), got 1.5")
    check_error(tmp_path, "[noise]\nmodel = 'gaussian'\nsigma = 0.1\nlayers = [0, 2]\n",
                match=r"run.toml:4: noise.layers = \[0, 2\]: layer 2 does not exist; the "
                      r"network has 2 layers")
    check_error(tmp_path, 'name = "my run/1"\n',
                match=r'name must be a file stem .* got \'my run/1\'; write name = "my-run-1"')
    check_error(tmp_path, "[optimizer]\nname = 'sgd'\nnesterov = true\n",
                match=r"run.toml:3: optimizer.nesterov = true: nesterov=True needs momentum")


def test_unknown_keys_suggest(tmp_path):
    check_error(tmp_path, "[trian]\nepochs = 3\n",
                match=r"run.toml:1: unknown key 'trian' \(did you mean 'train'\?\)")
    check_error(tmp_path, "epochs = 3\n",
                match=r"run.toml:1: unknown key 'epochs': it belongs in \[train\]")
    check_error(tmp_path, "[train]\nepoch = 3\n",
                match=r"run.toml:2: unknown key train.epoch = 3 \(did you mean train.epochs\?\)")
    check_error(tmp_path, "[rule]\nsigmaa = 1e-3\n",
                match=r"run.toml:2: unknown key rule.sigmaa = 0.001 \(did you mean 'sigma'\?\): "
                      r"rule 'danp' accepts")
    check_error(tmp_path, "[noise]\nmodel = 'gaussian'\nsigma = 0.1\nsigam = 1\n",
                match=r"run.toml:4: unknown key noise.sigam = 1 .*noise model 'gaussian' accepts")
    check_error(tmp_path, "[data]\nn_trian = 5\n",
                match=r"run.toml:2: unknown key data.n_trian = 5 \(did you mean 'n_train'\?\)")
    check_error(tmp_path, "[optimizer]\nmomentum = 0.9\n",
                match=r"unknown key optimizer.momentum = 0.9: optimizer 'adam' accepts")
    check_error(tmp_path, "[model]\nactivation_params = {sloap = 0.1}\n",
                match=r"unknown key model.activation_params.sloap = 0.1 \(did you mean 'slope'")


@pytest.mark.parametrize("text, match", [
    ("[rule]\nname = 'danpp'\n", r"run.toml:2: rule.name must be one of .*'danp'.*, got 'danpp' "
                                 r"\(did you mean 'danp'\?\)"),
    ("[noise]\nmodel = 'gausian'\n", r"noise.model must be one of .*'telegraph'.*got 'gausian'"),
    ("[optimizer]\nname = 'adamw'\n", r"optimizer.name must be one of 'sgd', 'adam', got 'adamw'"),
    ("[data]\nname = 'mnits'\n", r"data.name must be one of .*'mnist'.* got 'mnits'"),
    ("[model]\nactivation = 'relu6'\n", r"model.activation must be one of .*got 'relu6'"),
    ("[model]\nloss = 'mse'\n", r"model.loss must be one of 'cross_entropy', 'softmax_mse', 'squared_error'"),
    ("[backend]\nname = 'gpu'\n", r"backend.name must be one of 'auto', 'cpu', 'cuda'"),
])
def test_unknown_names_list_valid_ones(tmp_path, text, match):
    check_error(tmp_path, text, match=match)


def test_layer_widths_must_fit_the_data(tmp_path):
    check_error(tmp_path, "[model]\nlayers = [784, 100, 10]\n", match=re.escape(
        "run.toml:2: model.layers = [784, 100, 10] does not fit dataset 'digits': the first "
        "width must be its input size 64; set [model] layers = [64, 100, 10]"))
    check_error(tmp_path, "[model]\nlayers = [64, 100, 5]\n",
                match=r"the last width must be its number of classes 10")
    check_error(tmp_path, "[data]\nname = 'mnist'\n",
                match=r"run.toml:2: model.layers = \[64, 64, 10\] \(the default\) does not fit "
                      r"dataset 'mnist': the first width must be its input size 784")
    check_error(tmp_path, "[data]\nname = 'cifar100'\nlabel_mode = 'coarse'\n[model]\n"
                          "layers = [3072, 100]\n",
                match=r"number of classes 20; set \[model\] layers = \[3072, 20\]")
    check_error(tmp_path, "[data]\nname = 'teacher'\nn_inputs = 8\n[model]\n"
                          "loss = 'squared_error'\nlayers = [20, 10]\n",
                match=r"input size 8")
    check_error(tmp_path, "[data]\nname = 'teacher'\n",
                match=r"run.toml:2: model.loss = 'cross_entropy' \(the default\) needs class "
                      r"labels but dataset 'teacher' is a regression set")
    check_error(tmp_path, "[data]\nname = 'teacher'\n[model]\nloss = 'softmax_mse'\n",
                match=r"model.loss = 'softmax_mse' needs class labels but dataset 'teacher'")
    check_error(tmp_path, "[model]\nloss = 'squared_error'\n",
                match=r"is a classification set \(integer labels\); set \[model\] loss = "
                      r"\"cross_entropy\" \(or \"softmax_mse\"\)")
    assert load_config(None, ["model.loss=softmax_mse"]).model.loss == "softmax_mse"
    check_error(tmp_path, "[model]\nlayers = [64]\n", match=r"at least an input and an output")


def test_malformed_toml_names_the_line(tmp_path):
    check_error(tmp_path, "[train]\nepochs = 10\nbatch_size = \n",
                match=r"run.toml:3: not valid TOML \(.*\); strings need quotes")
    check_error(tmp_path, "[rule]\nname = danp\n", match=r"run.toml:2: not valid TOML")


def test_missing_file(tmp_path):
    with pytest.raises(NoisysimError, match=r"config file '.*nope.toml' does not exist"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("bad, match", [
    ("train.epochs", r"bad --set 'train.epochs': expected section.key=value"),
    ("=3", r"bad --set '=3': expected section.key=value"),
    ("train..epochs=3", r"expected section.key=value"),
    ("trian.epochs=3", r"--set trian.epochs=3: unknown key 'trian' \(did you mean 'train'"),
    ("train=3", r"--set train=3: train is a table; set one key, e.g. --set train.epochs=..."),
    ("rule.sigma.x=3", r"rule.sigma is not a table"),
    ("train.epochs='10'", r"--set train.epochs='10': train.epochs must be an integer, got "
                          r"'10' \(a string\): write --set train.epochs=10 without quotes"),
    ("rule.name=danpp", r"--set rule.name=danpp: rule.name must be one of"),
    ("model.layers=[64,32,7]", r"--set model.layers=\[64,32,7\]: model.layers = \[64, 32, 7\] "
                               r"does not fit dataset 'digits'"),
])
def test_bad_set(bad, match):
    with pytest.raises(NoisysimError, match=match):
        load_config(None, [bad])


def test_config_from_dict_validates_the_same_way():
    base = load_config(None).to_dict()
    base["train"]["epochs"] = "10"
    with pytest.raises(NoisysimError, match=r"config dict: train.epochs must be an integer, got "
                                            r"'10' \(a string\)"):
        config_from_dict(base)
    with pytest.raises(NoisysimError, match=r"unknown key 'foo'"):
        config_from_dict({"foo": 1})
    # a partial dict is completed from the embedded default, as a file is
    cfg = config_from_dict({"rule": {"name": "np"}, "train": {"epochs": 2}})
    assert cfg.to_dict() == load_config(None, ["rule.name=np", "train.epochs=2"]).to_dict()
    assert cfg.noise.model == "gaussian" and cfg.optimizer.lr == 3e-3


# -- the schema -----------------------------------------------------------------------------

def test_schema_documents_every_key():
    keys = {k.key for k in SCHEMA}
    assert {f"train.{f.name}" for f in dataclasses.fields(TrainSettings)} <= keys
    assert all(k.description and "see noisysim" not in k.description for k in SCHEMA)
    table = schema_markdown()
    assert table.count("\n") == len(SCHEMA) + 1
    assert "| `rule.name` | string | `\"danp\"` |" in table


def test_a_conv_nets_input_shape_is_attributed_to_the_dataset():
    _, origins = explain_config(None, ["data.name=fashion-mnist", "model=fashion_convnet"])
    assert origins["model.input_shape"] == "default (data 'fashion-mnist': its image shape)"
    _, origins = explain_config(None, ["data.name=fashion-mnist", "model=fashion_convnet",
                                       "model.input_shape=[28, 28, 1]"])
    assert origins["model.input_shape"] == "--set model.input_shape=[28, 28, 1]"


def test_backend_graphs_is_stored_only_when_on():
    """Off, the default, leaves resolved configs as they were before the key existed (stored
    trajectories still match their plans); on, the run's file says so."""
    assert load_config(None).to_dict()["backend"] == {"name": "auto"}
    on = load_config(None, ["backend.graphs=true"]).to_dict()["backend"]
    assert on == {"name": "auto", "graphs": True}
