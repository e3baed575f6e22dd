"""The spec: defaults, overrides, one `field: message` line per problem, JSON Schema."""

import json

import pytest

from landscape_ray.cli.main import main
from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.models import build, load_model
from landscape_ray.spec.schema import Spec
from landscape_ray.spec.specfile import load_spec


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("grid:\n  x: {min: -2, max: 2, num: 9}\n")
    spec = load_spec(path, ["grid.y={min: 0, max: 1, num: 3}", "data.splits=[train, test]", "compute.actors=3"])
    assert (spec.grid.x.num, spec.grid.y.num, spec.compute.actors) == (9, 3, 3)
    assert spec.data.splits == ["train", "test"]
    assert spec.directions.norm == "filter" and spec.directions.ignore == "biasbn"
    assert load_spec(None, ["grid.x.num=21"]).grid.x.model_dump() == {"min": -1.0, "max": 1.0, "num": 21}


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.colour=red", "model.colour: unknown key"),
        ("grid.x={min: 1, max: 1, num: 5}", "grid.x: min (1.0) must be < max (1.0)"),
        ("grid.x={min: -1, max: 1, num: 0}", "grid.x.num: Input should be greater than or equal to 1"),
        ("directions.norm=spectral", "directions.norm: Input should be 'filter', 'layer' or 'none'"),
        ("compute.actors=0", "compute: actors must be >= 1 or 'auto', got 0"),
        ("data.splits=[train, train]", "data: splits repeat a name"),
        ("grid.tile=[2, 3, 4]", "grid: tile must be"),
        ("nonsense", "--set nonsense: expected KEY=VALUE"),
        ("grid.x={min: 1", "--set grid.x={min: 1: the value is not valid YAML"),
    ],
)
def test_errors_name_the_field(override, message):
    with pytest.raises(SpecError) as err:
        load_spec(None, [override])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_every_problem_gets_its_own_line():
    with pytest.raises(SpecError) as err:
        load_spec(None, ["model.colour=red", "grid.x.num=-1", "grid.x.max=-5"])
    assert str(err.value).splitlines() == [
        "model.colour: unknown key",
        "grid.x.num: Input should be greater than or equal to 1",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "spec file not found"),
        ("a: [1, 2", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_schema_command_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == set(Spec.model_fields)
    assert schema["$defs"]["ModelSpec"]["additionalProperties"] is False


def test_an_import_path_this_package_once_had_still_builds_its_model():
    """Specs and stores of earlier versions name `landscape_ray.paper:digits_resnet` (the paper's quick nets); since
    the package was arranged in layers it is the registered model `digits_resnet`, and the old name still reads as
    it (checked against the model built by its new name)."""
    spec = load_spec(None, ["model.arch=landscape_ray.paper:digits_resnet", "model.kwargs={depth: 14, width: 2}"])
    assert spec.model.arch == "digits_resnet"
    old, new = load_model(spec), build("digits_resnet", depth=14, width=2)
    assert [(k, v.shape) for k, v in old.state_dict().items()] == [(k, v.shape) for k, v in new.state_dict().items()]
    assert Spec.model_validate({"model": {"arch": "landscape_ray.paper:digits_resnet"}}).model.arch == "digits_resnet"
