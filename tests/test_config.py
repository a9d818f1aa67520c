"""Each default in one place: what a config schema says is what its class does."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from hydra.utils import get_object
from omegaconf import MISSING

from flowtrain.config import SCHEMAS

OURS = [(group, name, schema) for group, options in SCHEMAS.items()
        for name, schema in options.items()
        if schema._target_.startswith("flowtrain.")]


@pytest.mark.parametrize("group, name, schema", OURS, ids=[f"{g}={n}" for g, n, _ in OURS])
def test_schema_defaults_are_the_constructors_defaults(group, name, schema):
    """A key of ``group=name`` and the parameter of its ``_target_`` have one default, so
    code that builds a component without the config behaves as the CLI does."""
    parameters = inspect.signature(get_object(schema._target_)).parameters
    for field in dataclasses.fields(schema):
        if field.name == "_target_":
            continue
        assert field.name in parameters, f"{group}.{field.name} is not a parameter"
        default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                   else field.default)
        if default is MISSING:
            continue
        given = parameters[field.name].default
        if given is inspect.Parameter.empty:
            continue  # a required parameter: the config's default is the only one
        if isinstance(given, tuple):  # a constructor's immutable default for a YAML list
            given = list(given)
        assert given == default, f"{group}={name}: {field.name} is {default!r} in the schema, " \
                                 f"{given!r} in {schema._target_}"


@pytest.mark.parametrize("args, lr", [
    (["model=pixelcnn_arflow", "data=photo_patches"], 1e-2),  # conf/data_model/
    (["model=pixelcnn_arflow", "data=digits"], 1e-3),  # the regime's
    (["model=realnvp", "data=photo_patches"], 1e-3),
    (["model=pixelcnn_arflow", "data=photo_patches", "optim.lr=3e-3"], 3e-3),
    (["experiment=pixelcnn_arflow_mnist", "data=photo_patches"], 1e-3),  # a preset wins
])
def test_a_data_model_setting_applies_to_that_pair_alone(args, lr, tmp_path):
    import yaml
    from conftest import run_cli

    cfg = yaml.safe_load(run_cli(*args, "--cfg", "job", cwd=tmp_path).stdout)
    assert cfg["optim"]["lr"] == lr
