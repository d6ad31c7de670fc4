"""TrainConfig, step lists, YAML files and the merge of config layers."""

import pytest

from curvlab.runs import (
    ConfigError,
    ConfigMismatchError,
    TrainConfig,
    load_yaml,
    parse_steps,
    resolve_config,
)
from curvlab.runs.config import DEFAULT_LR, config_differences


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0,100,200", (0, 100, 200)),
        ("0:30:10", (0, 10, 20, 30)),
        ("0:25:10, 3", (0, 3, 10, 20)),
        ("5", (5,)),
        (7, (7,)),
        ([0, "10:20:5", 2], (0, 2, 10, 15, 20)),
        ([], ()),
    ],
)
def test_parse_steps(spec, expected):
    assert parse_steps(spec) == expected


@pytest.mark.parametrize("spec", ["a", "1:2", "0:10:0", "-1", "1:2:3:4"])
def test_parse_steps_rejects_malformed(spec):
    with pytest.raises(ConfigError):
        parse_steps(spec)


def test_parse_steps_rejects_an_empty_range_and_an_empty_string():
    # issue 11, item 7: 10:0:1 was an empty range, "" recorded only the last step
    with pytest.raises(ConfigError, match="range '10:0:1' is empty: its start 10"):
        parse_steps("10:0:1")
    for empty in ("", " , "):
        with pytest.raises(ConfigError, match="No steps given"):
            parse_steps(empty)
    with pytest.raises(ConfigError, match="No steps given"):
        resolve_config({"problem": "digits_logreg", "steps": 10, "record_steps": ""})
    with pytest.raises(ConfigError, match="lists 1,000,000,000,001 steps"):
        parse_steps("0:1000000000000:1")  # a set of them would not fit in memory


def test_defaults_and_normalisation():
    config = TrainConfig(problem="digits_logreg", steps=50, record_steps=(20, 0, 20))
    assert config.lr == DEFAULT_LR["sgd"]
    assert config.record_steps == (0, 20, 50)  # the last step is always recorded
    assert TrainConfig(problem="digits_logreg", steps=9).record_steps == (0, 9)
    adam = TrainConfig(problem="digits_logreg", optimizer="adam", lr=1)
    assert adam.lr == 1.0
    assert isinstance(adam.lr, float)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"problem": "nope"}, "Unknown problem 'nope'"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"steps": -1}, "steps must be at least 0"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"steps": 10, "record_steps": (0, 20)}, "record_steps must lie in"),
        ({"optimizer_options": {"betas": (0.9, 0.99)}}, "do not apply to sgd"),
        ({"record_gradients": "yes"}, "record_gradients must be true or false"),
    ],
)
def test_invalid_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"problem": "digits_logreg", **values})


def test_dict_round_trip():
    config = TrainConfig(
        problem="digits_mlp",
        optimizer="adam",
        steps=30,
        record_steps=(0, 10),
        optimizer_options={"betas": (0.8, 0.9), "eps": 1e-6},
    )
    values = config.to_dict()
    assert values["record_steps"] == [0, 10, 30]
    assert values["optimizer_options"] == {"betas": [0.8, 0.9], "eps": 1e-6}
    assert TrainConfig.from_dict(values) == config
    assert config.optimizer_kwargs() == {"lr": 1e-3, "betas": (0.8, 0.9), "eps": 1e-6}


def test_from_dict_names_unknown_keys():
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        TrainConfig.from_dict({"problem": "digits_mlp", "batchsize": 3})
    with pytest.raises(ConfigError, match="needs a problem"):
        TrainConfig.from_dict({"steps": 3})


def test_yaml_file_and_command_line_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "problem: digits_mlp\n"
        "optimizer: adam\n"
        "lr: 1e-2\n"  # YAML 1.1 reads this as a string
        "batch-size: 64\n"
        "steps: 100\n"
        "record_steps: 0:100:50\n"
        "optimizer_options: {eps: 1e-6, weight_decay: 0.01}\n"
    )
    assert load_yaml(path)["batch_size"] == 64
    config = resolve_config(
        {"batch_size": 16, "seed": None, "optimizer_options": {"eps": 1e-7}},
        file=path,
    )
    assert config.batch_size == 16  # the command line wins
    assert config.lr == 0.01
    assert config.seed == 0  # None means "not given"
    assert config.record_steps == (0, 50, 100)
    assert config.optimizer_options == {"eps": 1e-7, "weight_decay": 0.01}


def test_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("problem: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(listed)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("problem: digits_mlp\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="Unknown option 'learning_rate'"):
        load_yaml(unknown)
    assert load_yaml(_empty(tmp_path)) == {}


def _empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path


def test_stored_config_is_the_base_layer():
    stored = TrainConfig(
        problem="digits_mlp", lr=0.3, steps=40, batch_size=20, record_steps=(0, 20, 30)
    )
    assert resolve_config({}, stored=stored) == stored
    longer = resolve_config({"steps": 80}, stored=stored)
    assert longer.record_steps == (0, 20, 30, 40, 80)
    assert longer.lr == 0.3
    shorter = resolve_config({"steps": 25}, stored=stored)
    assert shorter.record_steps == (0, 20, 25)
    explicit = resolve_config({"record_steps": "0,5"}, stored=stored)
    assert explicit.record_steps == (0, 5, 40)
    # a stored lr belongs to the stored optimizer
    assert resolve_config({"optimizer": "adam"}, stored=stored).lr == DEFAULT_LR["adam"]


def test_compatibility_allows_only_extents():
    base = TrainConfig(problem="digits_mlp", steps=40, record_steps=(0, 20))
    longer = TrainConfig(problem="digits_mlp", steps=80, record_steps=(10,))
    merged = base.extended_by(longer)
    assert merged.steps == 80
    assert merged.record_steps == (0, 10, 20, 40, 80)
    other = TrainConfig(problem="digits_mlp", steps=40, batch_size=7, lr=0.5)
    with pytest.raises(ConfigMismatchError, match="batch_size: stored 128") as info:
        base.check_compatible(other, where="RUN")
    assert [name for name, _, _ in info.value.differences] == ["batch_size", "lr"]
    assert "in RUN" in str(info.value)
    assert "--force" in str(info.value)


def test_config_differences():
    assert config_differences({"a": 1, "b": 2}, {"a": 1, "c": 3}, ignore=["c"]) == [
        ("b", 2, None)
    ]
