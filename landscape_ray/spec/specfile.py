"""Reading a spec: YAML files (or standard input), `--set a.b=v` overrides, validation into one-line errors.

    spec = load_spec("jobs/quickstart.yaml", overrides=["grid.x.num=11"])
    train_spec = load_spec("jobs/quickstart-train.yaml", model=TrainSpec)
    print(schema_json())                                   # what `landscape-ray schema` prints

`SpecError` carries one `path.to.field: message` line per problem; the CLI prints those lines and nothing else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from landscape_ray.core.errors import SpecError
from landscape_ray.spec.schema import Spec

MAX_SPEC_BYTES = 1 << 20


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict; values are parsed as YAML (so 3, 0.5, [1,2], null work).

    A section the file leaves out starts empty and takes its defaults, so `--set grid.x.num=21` works on any spec.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item}: expected KEY=VALUE, e.g. grid.x.num=21")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise SpecError(f"--set {item}: {part} is not a section")
            node = node[part]
        try:
            node[leaf] = parse(value)
        except yaml.YAMLError as err:
            raise SpecError(f"--set {item}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    return raw


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        field, sep, rest = msg.partition(": ")
        if sep and field.isidentifier():  # a model-level check that names its field: attach it to the path
            loc, msg = f"{loc}.{field}" if loc else field, rest
        lines.append(f"{loc or '(spec)'}: {msg}")
    return "\n".join(lines)


def validate(model: type[BaseModel], raw: dict):
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_errors(err)) from None


class SpecLoader(yaml.SafeLoader):
    """YAML without aliases: a spec is a few lines a person writes, and aliases nested a few levels deep expand a
    file of bytes into gigabytes (the "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: a YAML alias (*name); write the value out instead")
        return super().compose_node(parent, index)


def parse(text: str):
    """A YAML document (a spec file or a --set value) as plain data."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


def read_yaml(path: str | Path) -> dict:
    """The YAML mapping in `path`; `-` reads standard input (`... | landscape-ray run -`)."""
    path = Path(path)
    if str(path) != "-" and not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    data = sys.stdin.buffer.read(MAX_SPEC_BYTES + 1) if str(path) == "-" else path.open("rb").read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: more than {MAX_SPEC_BYTES // 2**20} MiB; a spec is a few lines of YAML")
    try:
        raw = parse(data.decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start} is {data[err.start]:#04x})") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_spec(path: str | Path | None = None, overrides: list[str] = (), model: type[BaseModel] = Spec):
    """Read a YAML spec (or start from the defaults), apply `--set` overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    return validate(model, apply_overrides(raw, list(overrides)))


def schema_json(model: type[BaseModel] = Spec) -> str:
    return json.dumps(model.model_json_schema(), indent=2)
