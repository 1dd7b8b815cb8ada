"""YAML reading and writing for recipes: `!Modifier` tags, line numbers, SparseML's number quirks.

PyYAML's SafeLoader is the base, so no YAML tag can construct Python objects; we only add a
constructor for `!Name` tags (any style: block or flow) that records the tag and its fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from sparseforge.errors import RecipeError


class LineDict(dict):
    """A mapping that remembers the 1-based line of itself and of each key, for error messages."""

    line: int | None = None
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_lines = {}

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)


@dataclass
class ModifierSpec:
    """A `!Name` node of the recipe, before its fields are resolved and validated."""

    name: str
    fields: LineDict
    line: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader plus line tracking and `!Modifier` tags."""


# YAML 1.1 reads `8e-5` (no dot) as a string; SparseML users expect a float.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def _construct_mapping(loader: _RecipeLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise RecipeError("a mapping key must be a plain value", line=key_node.start_mark.line + 1) from None
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_modifier(loader: _RecipeLoader, tag_suffix: str, node: yaml.Node) -> ModifierSpec:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        fields = _construct_mapping(loader, node)
    elif isinstance(node, yaml.ScalarNode) and loader.construct_scalar(node) in ("", None):
        fields = LineDict()
        fields.line = line
    else:
        raise RecipeError(f"!{tag_suffix} must be followed by a mapping of its fields", line=line, modifier=tag_suffix)
    return ModifierSpec(name=tag_suffix, fields=fields, line=line)


_RecipeLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_RecipeLoader.add_multi_constructor("!", _construct_modifier)


def load_yaml(text: str, file: str | None = None) -> Any:
    """Parse recipe YAML text; syntax errors become RecipeError with the file and line."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except RecipeError as err:
        raise err.located(file=file) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise RecipeError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as err:
        raise RecipeError(f"invalid YAML: {err}", file=file) from None


class _RecipeDumper(yaml.SafeDumper):
    """Writes recipes readably: modifiers as `!Name` mappings, short lists inline."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: _RecipeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(item, (int, float, str, bool)) for item in data) and len(data) <= 8
    if flow and any(isinstance(item, str) and len(item) > 30 for item in data):
        flow = False
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_RecipeDumper.add_representer(list, _represent_list)
_RecipeDumper.add_representer(tuple, _represent_list)
_RecipeDumper.add_representer(LineDict, _RecipeDumper.represent_dict)


def represent_tagged(name: str, fields: dict[str, Any]) -> Any:
    """A value that dumps as `!name` followed by its fields."""
    return _Tagged(name, fields)


@dataclass
class _Tagged:
    name: str
    fields: dict[str, Any]


def _represent_tagged(dumper: _RecipeDumper, data: _Tagged) -> yaml.Node:
    return dumper.represent_mapping(f"!{data.name}", data.fields, flow_style=False)


_RecipeDumper.add_representer(_Tagged, _represent_tagged)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False, width=100)
