"""YAML reading and writing for recipes: `!Modifier` tags, line numbers, SparseML's number quirks.

PyYAML's safe constructor is the base, so no YAML tag can construct Python objects; we only add a
constructor for `!Name` tags (any style: block or flow) that records the tag and its fields.
Reading is bounded (see `limits`): nesting depth, the size of the document with its aliases
expanded (a 342-byte "billion laughs" of 9 lists of 9 aliases expands to 387 million) and bad
scalars (`!!bool maybe`, 5,000-digit integers) all end in a RecipeError naming the line.
libyaml scans and parses when it is installed (6x faster); composing stays in Python so that
nesting can be counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from sparseforge.errors import RecipeError
from sparseforge.recipe.limits import MAX_YAML_DEPTH, MAX_YAML_VALUES, one_line


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


if yaml.__with_libyaml__:  # pragma: no branch - the pure-Python parser is the fallback
    from yaml.cyaml import CParser

    class _ParsingBase(Composer, CParser, SafeConstructor, Resolver):
        """libyaml's scanner and parser; PyYAML's composer, safe constructor and resolver."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover
    _ParsingBase = yaml.SafeLoader  # type: ignore[misc,assignment]


class _BoundedLoader(_ParsingBase):  # type: ignore[misc,valid-type]
    """A safe loader that refuses deep nesting, alias bombs, recursive aliases and bad scalars."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise RecipeError(
                    f"the YAML nests more than {MAX_YAML_DEPTH} levels deep",
                    line=mark.line + 1 if mark else None,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        self.prepare_document(node)
        return super().construct_document(node)

    def prepare_document(self, node: yaml.Node) -> None:
        """A hook between the bounds check and construction; nothing for plain YAML."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (RecipeError, yaml.YAMLError):
            raise
        except (ValueError, TypeError, LookupError, ArithmeticError, AttributeError) as err:
            value = one_line(node.value, 60) if isinstance(node, yaml.ScalarNode) else node.id
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            detail = f" ({one_line(err, 120)})" if isinstance(err, ValueError) else ""
            raise RecipeError(
                f"invalid YAML: {value!r} is not a valid {tag} value{detail}",
                line=node.start_mark.line + 1,
            ) from None


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it past MAX_YAML_VALUES values or MAX_YAML_DEPTH
    levels, or refer to a node inside itself; counted on the node graph, so in linear time."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values when expanded, levels below)
    active: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_YAML_DEPTH:  # before recursing further: aliases can chain deep paths
            raise RecipeError(
                f"YAML aliases make the recipe nest more than {MAX_YAML_DEPTH} levels deep",
                line=node.start_mark.line + 1,
            )
        key = id(node)
        if key in done:
            size, height = done[key]
        elif key in active:
            raise RecipeError(
                "a YAML alias refers to a node that contains it", line=node.start_mark.line + 1
            )
        else:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [item for pair in node.value for item in pair]
            active.add(key)
            size, height = 1, 0
            for child in children:
                child_size, child_height = visit(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_YAML_VALUES:
                    raise RecipeError(
                        f"YAML aliases expand the recipe to more than {MAX_YAML_VALUES:,} values "
                        "(an alias bomb?)",
                        line=node.start_mark.line + 1,
                    )
            active.discard(key)
            done[key] = (size, height)
        if depth + height > MAX_YAML_DEPTH:
            raise RecipeError(
                f"YAML aliases make the recipe nest more than {MAX_YAML_DEPTH} levels deep",
                line=node.start_mark.line + 1,
            )
        return size, height

    visit(root, 0)


class _RecipeLoader(_BoundedLoader):
    """The bounded safe loader plus line tracking and `!Modifier` tags."""

    def prepare_document(self, node: yaml.Node) -> None:
        _link_aliased_variables(node)


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _link_aliased_variables(root: yaml.Node) -> None:
    """Turn each `*alias` of a numeric variable into `eval(variable)`, so that `recipe_args`
    reach every place the recipe uses it.

    YAML resolves `end_epoch: *num_epochs` to the number when parsing, so overriding
    `num_epochs` changed only the variable (SparseML's behaviour: the seed recipe, written with
    anchors, kept its 40 epochs whatever `recipe_args` said). Variables are the numeric scalars of
    the top-level mapping and of its stages (its mapping values); an alias of a root variable
    inside a stage that defines the same name is left alone. Runs after `_check_expansion`, on
    the node graph (each node once).
    """
    if not isinstance(root, yaml.MappingNode):
        return
    stages = [v for _, v in root.value if isinstance(v, yaml.MappingNode)]
    stage_names = {
        id(stage): frozenset(k.value for k, _ in stage.value if isinstance(k, yaml.ScalarNode))
        for stage in stages
    }
    for scope in (root, *stages):
        _AliasLinker(scope, stage_names).visit(scope, frozenset())


class _AliasLinker:
    """One scope's numeric variables, and the walk that links their aliases below it."""

    def __init__(self, scope: yaml.MappingNode, stage_names: dict[int, frozenset[str]]):
        self.scope = scope
        self.stage_names = stage_names
        self.seen: set[int] = set()
        self.variables: dict[int, tuple[str, int]] = {}  # id(node) -> (name, defining entry)
        for index, (key, value) in enumerate(scope.value):
            if (
                isinstance(key, yaml.ScalarNode)
                and key.value.isidentifier()
                and isinstance(value, yaml.ScalarNode)
                and value.tag in _NUMBER_TAGS
                and id(value) not in self.variables
            ):
                self.variables[id(value)] = (key.value, index)

    def linked(self, child: yaml.Node, hidden: frozenset[str]) -> yaml.Node:
        name = self.variables.get(id(child), ("", -1))[0]
        if not name or name in hidden:
            return child
        return yaml.ScalarNode(
            "tag:yaml.org,2002:str", f"eval({name})", child.start_mark, child.end_mark
        )

    def defines(self, node: yaml.Node, index: int, value: yaml.Node) -> bool:
        """Whether this entry is the variable's own definition (not an alias of it)."""
        return node is self.scope and self.variables.get(id(value), ("", -1))[1] == index

    def visit(self, node: yaml.Node, hidden: frozenset[str]) -> None:
        if not self.variables or id(node) in self.seen:
            return
        self.seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            node.value = [self.linked(item, hidden) for item in node.value]
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            if node is not self.scope:  # a stage's own names win inside it
                hidden = hidden | self.stage_names.get(id(node), frozenset())
            node.value = [
                (key, value if self.defines(node, index, value) else self.linked(value, hidden))
                for index, (key, value) in enumerate(node.value)
            ]
            children = [value for _, value in node.value]
        else:
            return
        for child in children:
            self.visit(child, hidden)


# YAML 1.1 reads `8e-5` (no dot) as a string; SparseML users expect a float.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789")
)


def _construct_mapping(loader: _RecipeLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise RecipeError(
                "a mapping key must be a plain value", line=key_node.start_mark.line + 1
            ) from None
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_modifier(loader: _RecipeLoader, tag_suffix: str, node: yaml.Node) -> ModifierSpec:
    line = node.start_mark.line + 1
    if len(tag_suffix) > 100:
        raise RecipeError(
            f"'!{tag_suffix[:40]}...' ({len(tag_suffix):,} characters) is not a modifier name",
            line=line,
        )
    if isinstance(node, yaml.MappingNode):
        fields = _construct_mapping(loader, node)
    elif isinstance(node, yaml.ScalarNode) and loader.construct_scalar(node) in ("", None):
        fields = LineDict()
        fields.line = line
    else:
        raise RecipeError(
            f"!{tag_suffix} must be followed by a mapping of its fields",
            line=line,
            modifier=tag_suffix,
        )
    return ModifierSpec(name=tag_suffix, fields=fields, line=line)


_RecipeLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_RecipeLoader.add_multi_constructor("!", _construct_modifier)


def load_yaml(text: str, file: str | None = None) -> Any:
    """Parse recipe YAML text; every problem becomes a one-line RecipeError with file, line and column."""
    return _load(text, _RecipeLoader, file)


def load_plain_yaml(text: str) -> Any:
    """Parse a YAML value (e.g. one `--recipe_args` value) with the same bounds; no `!` tags."""
    return _load(text, _BoundedLoader, None)


def _load(text: str, loader: type, file: str | None) -> Any:
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeConstructor subclass
    except RecipeError as err:
        raise err.located(file=file) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        where = f" at column {mark.column + 1}" if mark else ""
        context = err.context or ""
        cmark = err.context_mark
        if context and cmark and mark and (cmark.line, cmark.column) != (mark.line, mark.column):
            context += f" (line {cmark.line + 1}, column {cmark.column + 1})"
        problem = "; ".join(p for p in (context, err.problem) if p)
        raise RecipeError(
            f"invalid YAML{where}: {one_line(problem)}", file=file, line=line
        ) from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1 if isinstance(err.position, int) else None
        raise RecipeError(
            f"invalid YAML: {one_line(err.reason)} (character {err.character!r})",
            file=file,
            line=line,
        ) from None
    except yaml.YAMLError as err:
        raise RecipeError(f"invalid YAML: {one_line(err)}", file=file) from None


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
    return yaml.dump(
        data, Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False, width=100
    )
