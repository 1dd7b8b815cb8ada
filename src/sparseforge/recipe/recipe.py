"""`Recipe`: a SparseML-compatible recipe, loaded, evaluated and validated.

Layout of a recipe (SparseML's): top-level keys whose name contains `modifiers` hold lists of
`!Modifier` entries; a top-level mapping that holds such groups is a *stage* (stages run one
after another); every other top-level key is a variable, usable as `eval(expr)` anywhere.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from sparseforge.errors import RecipeError
from sparseforge.recipe.expressions import as_number, resolve_value, resolve_variables
from sparseforge.recipe.limits import MAX_RECIPE_CHARS, MAX_YAML_DEPTH, one_line, recipe_errors_only
from sparseforge.recipe.registry import modifier_class
from sparseforge.recipe.yaml_io import (
    LineDict,
    ModifierSpec,
    dump_yaml,
    load_plain_yaml,
    load_yaml,
    represent_tagged,
)

if TYPE_CHECKING:
    from sparseforge.modifiers.base import Modifier

RECIPE_VERSION = "1.1.0"
_FRONT_MATTER_FENCE = re.compile(r"^---[ \t]*$", re.MULTILINE)
_RESERVED_KEYS = {"version"}


def _is_group_key(key: Any) -> bool:
    return isinstance(key, str) and "modifiers" in key


@dataclass
class Stage:
    """One stage of a recipe: its groups of modifiers, its own variables, and its epoch offset."""

    name: str | None
    groups: dict[str, list[Modifier]]
    variables: dict[str, Any] = field(default_factory=dict)
    offset: float = 0.0

    @property
    def modifiers(self) -> list[Modifier]:
        return [mod for group in self.groups.values() for mod in group]

    @property
    def max_epochs(self) -> float:
        """End of this stage in run time: the latest epoch any of its modifiers names."""
        bounds = [b for mod in self.modifiers for b in mod.epoch_bounds()]
        return max(bounds) if bounds else self.offset


class Recipe:
    """A loaded recipe: resolved variables, stages of validated modifiers; `to_yaml()` round-trips."""

    def __init__(
        self,
        stages: list[Stage],
        variables: dict[str, Any] | None = None,
        version: str | None = RECIPE_VERSION,
        source: str | None = None,
    ):
        self.stages = stages
        self.variables = variables or {}
        self.version = version
        self.source = source

    # ----- loading ---------------------------------------------------------------------------
    @classmethod
    @recipe_errors_only
    def load(cls, source: Any, args: str | Mapping[str, Any] | None = None) -> Recipe:
        """Load a recipe from a path (.yaml/.yml/.md), YAML text, a dict, a list of modifiers or a Recipe.

        `args` overrides recipe variables: a dict, JSON text, or `k=v,k2=v2`.
        """
        overrides = parse_recipe_args(args)
        if isinstance(source, Recipe):
            if overrides:
                raise RecipeError("recipe_args cannot be applied to an already evaluated Recipe")
            return source
        if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
            if not all(hasattr(mod, "recipe_fields") for mod in source):
                raise RecipeError("a list given as a recipe must hold Modifier objects")
            if overrides:
                raise RecipeError("recipe_args cannot be applied to a list of Modifier objects")
            return cls([Stage(None, {"modifiers": list(source)})])
        if isinstance(source, Mapping):
            return cls._from_tree(source, overrides, file=None)
        if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
            path = Path(source)
            if not path.is_file():
                raise RecipeError(f"recipe file not found: {path}")
            try:
                with path.open(encoding="utf-8") as handle:  # no more than the size limit allows
                    text = handle.read(MAX_RECIPE_CHARS + 1)
            except (OSError, UnicodeDecodeError) as err:
                raise RecipeError(f"cannot read recipe file: {err}", file=str(path)) from None
            return cls.from_text(text, args=overrides, file=str(path), markdown=path.suffix.lower() == ".md")
        if isinstance(source, str):
            return cls.from_text(source, args=overrides)
        raise RecipeError(f"cannot load a recipe from a {type(source).__name__}")

    @classmethod
    @recipe_errors_only
    def from_text(
        cls,
        text: str,
        args: str | Mapping[str, Any] | None = None,
        file: str | None = None,
        markdown: bool | None = None,
    ) -> Recipe:
        """Parse recipe text: plain YAML, or Markdown whose first `---` front-matter block is the recipe."""
        if len(text) > MAX_RECIPE_CHARS:
            raise RecipeError(
                f"the recipe is longer than {MAX_RECIPE_CHARS:,} characters, the most a recipe may have", file=file
            )
        yaml_text = extract_front_matter(text, file=file, required=bool(markdown))
        tree = load_yaml(yaml_text, file=file)
        if tree is None:
            raise RecipeError("the recipe is empty", file=file)
        if isinstance(tree, list):
            tree = LineDict({"modifiers": tree})
        if not isinstance(tree, Mapping):
            raise RecipeError("a recipe must be a YAML mapping of variables and modifier groups", file=file)
        return cls._from_tree(tree, parse_recipe_args(args), file=file)

    @classmethod
    def _from_tree(cls, tree: Mapping[str, Any], overrides: dict[str, Any], file: str | None) -> Recipe:
        def line_of(mapping: Mapping, key: Any) -> int | None:
            return mapping.line_of(key) if isinstance(mapping, LineDict) else None

        global_raw: dict[str, Any] = {}
        raw_stages: list[tuple[str | None, Mapping]] = []
        top_groups: dict[str, Any] = {}
        version = tree.get("version")
        for key, value in tree.items():
            _check_name(key, file, line_of(tree, key))
            if key in _RESERVED_KEYS:
                continue
            if _is_group_key(key):
                top_groups[key] = value
            elif isinstance(value, Mapping) and any(_is_group_key(k) for k in value):
                raw_stages.append((str(key), value))
            else:
                _reject_hidden_modifiers(key, value, file, line_of(tree, key))
                global_raw[key] = value
        if top_groups and raw_stages:
            raise RecipeError(
                "a recipe has either modifier groups at the top level or stages, not both "
                f"(groups: {', '.join(top_groups)}; stages: {', '.join(n for n, _ in raw_stages)})",
                file=file,
            )
        if top_groups:
            raw_stages = [(None, LineDict(top_groups))]
            if isinstance(tree, LineDict):
                raw_stages[0][1].key_lines = {k: tree.line_of(k) for k in top_groups}

        stage_var_names = {
            k for _, body in raw_stages for k in body if not _is_group_key(k) and k not in _RESERVED_KEYS
        }
        unknown = sorted(set(overrides) - set(global_raw) - stage_var_names)
        if unknown:
            known = sorted(set(global_raw) | stage_var_names)
            raise RecipeError(
                f"recipe_args sets {', '.join(repr(k) for k in unknown)}, which the recipe does not define; "
                f"its variables are: {', '.join(known) or 'none'}",
                file=file,
            )

        def located(mapping: Mapping) -> Any:
            return lambda name: {"file": file, "line": line_of(mapping, name)}

        global_vars = resolve_variables(
            {k: overrides.get(k, v) for k, v in global_raw.items()}, where=located(tree)
        )
        stages: list[Stage] = []
        offset = 0.0
        for stage_name, body in raw_stages:
            stage_raw = {k: v for k, v in body.items() if not _is_group_key(k) and k not in _RESERVED_KEYS}
            for key, value in stage_raw.items():
                _check_name(key, file, line_of(body, key))
                _reject_hidden_modifiers(key, value, file, line_of(body, key))
            merged_raw = {**global_raw, **stage_raw}
            merged_raw = {k: overrides.get(k, v) for k, v in merged_raw.items()}
            if stage_raw:
                where = lambda name, body=body: {  # noqa: E731
                    "file": file,
                    "line": line_of(body if name in body else tree, name),
                }
                variables = resolve_variables(merged_raw, where=where)
            else:
                variables = global_vars
            groups: dict[str, list[Modifier]] = {}
            for group_name, entries in body.items():
                if not _is_group_key(group_name):
                    continue
                groups[group_name] = _build_group(group_name, entries, variables, file, line_of(body, group_name))
            stage = Stage(stage_name, groups, {k: variables[k] for k in stage_raw}, offset)
            for mod in stage.modifiers:
                mod._epoch_offset = offset
            stages.append(stage)
            if stage_name is not None:
                offset = max(offset, stage.max_epochs)
        return cls(stages, global_vars, version=str(version) if version is not None else RECIPE_VERSION, source=file)

    # ----- views -----------------------------------------------------------------------------
    @property
    def modifiers(self) -> list[Modifier]:
        """Every modifier of every stage, in recipe order."""
        return [mod for stage in self.stages for mod in stage.modifiers]

    @property
    def max_epochs(self) -> int:
        """SparseML's definition: the ceiling of the latest start/end epoch any modifier names (-1 if none)."""
        end = self.end_epoch
        return math.ceil(end - 1e-9) if end >= 0 else -1

    @property
    def end_epoch(self) -> float:
        """The latest start/end epoch any modifier names, not rounded (-1 if none): where training
        can stop, e.g. 1.5 for a recipe of one and a half epochs."""
        bounds = [b for mod in self.modifiers for b in mod.epoch_bounds()]
        return max(bounds) if bounds else -1.0

    def modifiers_of(self, kind: type[Modifier]) -> list[Modifier]:
        return [mod for mod in self.modifiers if isinstance(mod, kind)]

    # ----- writing ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The evaluated recipe as plain data with tagged modifiers (what `to_yaml` writes)."""

        def groups_of(stage: Stage) -> dict[str, Any]:
            return {
                group: [represent_tagged(mod.name, mod.recipe_fields()) for mod in mods]
                for group, mods in stage.groups.items()
            }

        data: dict[str, Any] = {"version": self.version or RECIPE_VERSION}
        if len(self.stages) == 1 and self.stages[0].name is None:
            data.update(groups_of(self.stages[0]))
        else:
            for index, stage in enumerate(self.stages):
                data[stage.name or f"stage_{index}"] = groups_of(stage)
        return data

    def to_yaml(self) -> str:
        """YAML of the evaluated recipe: no variables or eval() left; loading it gives equal modifiers."""
        return dump_yaml(self.to_dict())

    def save(self, path: str | os.PathLike) -> Path:
        """Write `to_yaml()` to `path` atomically (a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        names = ", ".join(mod.name for mod in self.modifiers)
        return f"Recipe({len(self.stages)} stage(s): {names})"


def _check_name(key: Any, file: str | None, line: int | None) -> None:
    """Variables, groups and stages are named by text: `&x: 1` (a key lost to an anchor) or `1: 2` is a mistake."""
    if not isinstance(key, str):
        raise RecipeError(
            f"the key {key!r} is not a name; variables, modifier groups and stages need text names", file=file, line=line
        )


def _reject_hidden_modifiers(key: Any, value: Any, file: str | None, line: int | None) -> None:
    """A `!Modifier` under a key whose name lacks 'modifiers' would be silently ignored: refuse it."""

    def contains_spec(item: Any) -> bool:
        if isinstance(item, ModifierSpec):
            return True
        if isinstance(item, list):
            return any(contains_spec(x) for x in item)
        if isinstance(item, Mapping):
            return any(contains_spec(x) for x in item.values())
        return False

    if contains_spec(value):
        raise RecipeError(
            f"'{key}' holds modifiers, but only keys whose name contains 'modifiers' are modifier groups "
            f"(e.g. rename it to '{key}_modifiers')",
            file=file,
            line=line,
        )


def _build_group(
    group: str, entries: Any, variables: dict[str, Any], file: str | None, line: int | None
) -> list[Modifier]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise RecipeError(f"'{group}' must be a list of !Modifier entries", file=file, line=line)
    built = []
    for entry in entries:
        if hasattr(entry, "recipe_fields"):  # an already built Modifier (dict sources)
            built.append(entry.model_copy(deep=True))
            continue
        entry = _spec_from_plain(entry)
        if not isinstance(entry, ModifierSpec):
            raise RecipeError(
                f"every entry of '{group}' must be a tagged modifier like '- !GMPruningModifier', got {entry!r}",
                file=file,
                line=line,
            )
        built.append(build_modifier(entry, variables, file))
    return built


def _spec_from_plain(entry: Any) -> Any:
    """Dict sources spell a modifier as `{"!Name": {fields}}` (or `{"Name": {...}}`)."""
    if isinstance(entry, Mapping) and not isinstance(entry, LineDict) and len(entry) == 1:
        (name, fields), = entry.items()
        if isinstance(name, str) and isinstance(fields, (Mapping, type(None))):
            line_fields = LineDict(fields or {})
            return ModifierSpec(name=name.lstrip("!"), fields=line_fields)
    return entry


def build_modifier(spec: ModifierSpec, variables: Mapping[str, Any], file: str | None = None) -> Modifier:
    """Resolve a `!Name` entry's eval() values and validate its fields into a Modifier."""
    try:
        cls = modifier_class(spec.name)
    except RecipeError as err:
        raise err.located(file=file, line=spec.line) from None

    def lookup(name: str) -> Any:
        if name not in variables:
            raise RecipeError(
                f"eval refers to undefined variable '{name}'; defined variables: {', '.join(sorted(variables)) or 'none'}"
            )
        return variables[name]

    fields = {}
    for key, value in spec.fields.items():
        try:
            fields[key] = resolve_value(value, lookup)
        except RecipeError as err:
            raise RecipeError(
                err.message, file=file, line=spec.fields.line_of(key), modifier=spec.name, field=str(key)
            ) from None
    try:
        return cls.model_validate(fields)
    except pydantic.ValidationError as err:
        raise _validation_error(err, cls, spec, file) from None
    except (TypeError, ArithmeticError, LookupError) as err:  # a validator met a value of the wrong type
        raise RecipeError(
            f"a field has a value of the wrong type ({type(err).__name__}: {one_line(err, 120)})",
            file=file,
            line=spec.line,
            modifier=spec.name,
        ) from None


def _validation_error(err: pydantic.ValidationError, cls: type[Modifier], spec: ModifierSpec, file: str | None) -> RecipeError:
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # typos first
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    field_name = loc[0] if loc else None
    line = spec.fields.line_of(field_name) if field_name in spec.fields else spec.line
    valid = ", ".join(name for name in cls.model_fields)
    if first["type"] == "extra_forbidden":
        import difflib

        near = difflib.get_close_matches(field_name or "", list(cls.model_fields), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        message = f"unknown field{hint}; valid fields: {valid}"
    elif first["type"] == "missing":
        message = f"required field is missing; valid fields: {valid}"
    else:
        message = first["msg"]
        if first["type"] not in ("value_error", "assertion_error") and "input" in first:
            message += f" (got {first['input']!r})"
        message = message.removeprefix("Value error, ")
    extra = f" ({len(err.errors()) - 1} more problem(s) in this modifier)" if len(err.errors()) > 1 else ""
    return RecipeError(
        message + extra,
        file=file,
        line=line,
        modifier=spec.name,
        field=".".join(loc) if loc else None,
    )


def _looks_like_path(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    stripped = text.strip()
    if stripped.endswith((".yaml", ".yml", ".md", ".txt")):
        return True
    return os.path.exists(stripped)


def extract_front_matter(text: str, file: str | None = None, required: bool = False) -> str:
    """The YAML of a recipe: Markdown front matter if present (blank lines keep line numbers), else all of `text`.

    Text before the first `---` (e.g. an HTML licence comment) is ignored; a `.md` without a
    closed `---` block is an error.
    """
    fences = _FRONT_MATTER_FENCE.finditer(text)
    first, second = next(fences, None), next(fences, None)
    if first and second:
        before = text[: first.start()]
        if not before.strip() or _only_html_comments(before):
            start, end = first.end(), second.start()
            preceding_lines = text[:start].count("\n")
            return "\n" * preceding_lines + text[start:end]
    if required:
        raise RecipeError(
            "a Markdown recipe needs its YAML between two '---' lines (front matter); none was found",
            file=file,
        )
    return text


def _only_html_comments(text: str) -> bool:
    """Whether `text` is only whitespace and `<!-- -->` comments; one pass, so linear time
    (a regex over many unclosed `<!--` took minutes on 120 KB)."""
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return True
        if not text.startswith("<!--", pos):
            return False
        end = text.find("-->", pos + 4)
        if end < 0:
            return False
        pos = end + 3


@recipe_errors_only
def parse_recipe_args(args: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Recipe variable overrides from a dict, JSON text, or `k=v,k2=v2` (values read as YAML scalars)."""
    if args is None or args == "":
        return {}
    if isinstance(args, Mapping):
        return {str(k): as_number(v) for k, v in args.items()}
    if not isinstance(args, str):
        raise RecipeError(f"recipe_args must be a dict or a string, got {type(args).__name__}")
    text = args.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"recipe_args is not valid JSON: {err.msg} at column {err.colno}") from None
        except ValueError as err:  # e.g. an integer of more than 4,300 digits
            raise RecipeError(f"recipe_args is not usable JSON: {one_line(err, 120)}") from None
        except RecursionError:
            parsed = None  # nested too deeply for the JSON reader: refused just below
        if parsed is None or _nesting_depth(parsed) > MAX_YAML_DEPTH:
            raise RecipeError(f"recipe_args JSON nests more than {MAX_YAML_DEPTH} levels deep")
        if not isinstance(parsed, dict):
            raise RecipeError("recipe_args JSON must be an object of variable: value")
        return {str(k): as_number(v) for k, v in parsed.items()}

    result: dict[str, Any] = {}
    for item in _split_top_level(text):
        if "=" not in item:
            raise RecipeError(f"recipe_args entry '{item}' is not of the form name=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise RecipeError(f"recipe_args name '{key}' is not a valid variable name")
        try:
            result[key] = as_number(load_plain_yaml(value.strip()))
        except RecipeError:
            result[key] = value.strip()
    return result


def _nesting_depth(value: Any) -> int:
    """Levels of lists/dicts in `value`, counted without recursion (JSON can nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_YAML_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _split_top_level(text: str) -> list[str]:
    """Split `a=1,b=[1,2]` on commas outside brackets."""
    items, depth, current = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        items.append("".join(current))
    return [item.strip() for item in items if item.strip()]
