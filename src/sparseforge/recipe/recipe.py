"""`Recipe`: a SparseML-compatible recipe, loaded, evaluated and validated.

Layout of a recipe (SparseML's): top-level keys whose name contains `modifiers` hold lists of
`!Modifier` entries; a top-level mapping that holds such groups is a *stage* (stages run one
after another); every other top-level key is a variable, usable as `eval(expr)` anywhere.

A `Recipe` is plain data: stages of validated, immutable modifier specs (`Modifier.is_spec`),
what `to_yaml()` writes. It runs nothing; `Manager(recipe)` makes its own modifier instances.
Stages hold absolute epochs, as in SparseML: a file's stage 2 is not moved after stage 1;
`Recipe.compose_staged(base, additional)` is what moves a recipe after another.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from sparseforge.errors import RecipeError
from sparseforge.recipe.expressions import as_number, resolve_value, resolve_variables
from sparseforge.recipe.limits import MAX_RECIPE_CHARS, MAX_YAML_DEPTH, one_line, recipe_errors_only
from sparseforge.recipe.registry import modifier_class
from sparseforge.recipe.timeline import RunSchedule, max_epochs_of
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
METADATA_KEY = "__metadata__"
_RESERVED_KEYS = {"version", METADATA_KEY}


def _is_group_key(key: Any) -> bool:
    return isinstance(key, str) and "modifiers" in key


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe: its groups of modifier specs and its own (resolved) variables."""

    name: str | None
    groups: dict[str, tuple[Modifier, ...]]
    variables: dict[str, Any] = field(default_factory=dict)

    @property
    def modifiers(self) -> list[Modifier]:
        return [mod for group in self.groups.values() for mod in group]

    def span(self, steps_per_epoch: int | None = None) -> tuple[float, float]:
        """(first start, last bound) of this stage in absolute epochs; (-1, -1) if none."""
        schedule = RunSchedule(steps_per_epoch)
        starts, bounds = [], []
        for spec in self.modifiers:
            mod = spec.instantiate()
            mod.bind_schedule(schedule)
            starts.append(max(mod.scheduled_start, 0.0))
            bounds.extend(mod.epoch_bounds())
        if not starts:
            return -1.0, -1.0
        return min(starts), max(bounds, default=min(starts))


class Recipe:
    """A loaded recipe: resolved variables, stages of validated modifiers; `to_yaml()` round-trips."""

    def __init__(
        self,
        stages: list[Stage],
        variables: dict[str, Any] | None = None,
        version: str | None = RECIPE_VERSION,
        source: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.stages = list(stages)
        self.variables = variables or {}
        self.version = version
        self.source = source
        self.metadata = metadata
        names = [stage.name for stage in self.stages if stage.name is not None]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise RecipeError(
                f"stage names must be unique; repeated: {', '.join(duplicates)}", file=source
            )

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
            return cls.from_modifiers(source)
        if isinstance(source, Mapping):
            return cls._from_tree(source, overrides, file=None)
        if isinstance(source, os.PathLike) or (
            isinstance(source, str) and _looks_like_path(source)
        ):
            path = Path(source)
            if not path.is_file():
                raise RecipeError(f"recipe file not found: {path}")
            try:
                with path.open(encoding="utf-8") as handle:  # no more than the size limit allows
                    text = handle.read(MAX_RECIPE_CHARS + 1)
            except (OSError, UnicodeDecodeError) as err:
                raise RecipeError(f"cannot read recipe file: {err}", file=str(path)) from None
            return cls.from_text(
                text, args=overrides, file=str(path), markdown=path.suffix.lower() == ".md"
            )
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
                f"the recipe is longer than {MAX_RECIPE_CHARS:,} characters, the most a recipe may have",
                file=file,
            )
        yaml_text = extract_front_matter(text, file=file, required=bool(markdown))
        tree = load_yaml(yaml_text, file=file)
        if tree is None:
            raise RecipeError("the recipe is empty", file=file)
        if isinstance(tree, list):
            tree = LineDict({"modifiers": tree})
        if not isinstance(tree, Mapping):
            raise RecipeError(
                "a recipe must be a YAML mapping of variables and modifier groups", file=file
            )
        return cls._from_tree(tree, parse_recipe_args(args), file=file)

    @classmethod
    def _from_tree(
        cls, tree: Mapping[str, Any], overrides: dict[str, Any], file: str | None
    ) -> Recipe:
        global_raw, raw_stages = _split_tree(tree, file)
        _check_overrides(overrides, global_raw, raw_stages, file)
        global_vars = resolve_variables(
            {k: overrides.get(k, v) for k, v in global_raw.items()}, where=_located(tree, file)
        )
        stages = [
            _build_stage(name, body, overrides, global_vars, file) for name, body in raw_stages
        ]
        version = tree.get("version")
        metadata = tree.get(METADATA_KEY)
        return cls(
            stages,
            global_vars,
            version=str(version) if version is not None else RECIPE_VERSION,
            source=file,
            metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
        )

    @classmethod
    def from_modifiers(
        cls, modifiers: Sequence[Modifier], metadata: dict[str, Any] | None = None
    ) -> Recipe:
        """A one-stage recipe of `modifiers` (copied as specs; the objects stay the caller's)."""
        if not all(hasattr(mod, "as_spec") for mod in modifiers):
            raise RecipeError("a list given as a recipe must hold Modifier objects")
        return cls(
            [Stage(None, {"modifiers": tuple(mod.as_spec() for mod in modifiers)})],
            metadata=metadata,
        )

    def with_modifiers(self, modifiers: Sequence[Modifier]) -> Recipe:
        """A new recipe: this one plus `modifiers` at the end of the last stage's `modifiers` group."""
        if not modifiers:
            return self
        *head, last = self.stages or [Stage(None, {})]
        groups = dict(last.groups)
        groups["modifiers"] = (*groups.get("modifiers", ()), *(mod.as_spec() for mod in modifiers))
        stage = Stage(last.name, groups, last.variables)
        return Recipe([*head, stage], self.variables, self.version, self.source, self.metadata)

    # ----- views -----------------------------------------------------------------------------
    @property
    def modifiers(self) -> list[Modifier]:
        """Every modifier of every stage, in recipe order."""
        return [mod for stage in self.stages for mod in stage.modifiers]

    @property
    def uses_steps(self) -> bool:
        """Whether a bound is counted in optimizer steps (then its end needs steps_per_epoch)."""
        names = ("start_step", "end_step", "update_every_steps")
        return any(getattr(mod, name, None) is not None for mod in self.modifiers for name in names)

    def instantiate(self) -> list[Modifier]:
        """New runnable modifiers, one per spec, in recipe order (what a Manager runs)."""
        return [spec.instantiate() for spec in self.modifiers]

    def end_epoch_at(self, steps_per_epoch: int | None = None) -> float:
        """The latest start/end any modifier names, in epochs, not rounded (-1 if none): where
        training can stop. Step-based bounds need `steps_per_epoch` (a RecipeError without it)."""
        schedule = RunSchedule(steps_per_epoch)
        bounds = []
        for mod in self.instantiate():
            mod.bind_schedule(schedule)
            bounds.extend(mod.epoch_bounds())
        return max(bounds) if bounds else -1.0

    def max_epochs_at(self, steps_per_epoch: int | None = None) -> int:
        """SparseML's `max_epochs` (the ceiling of `end_epoch_at`), -1 if no modifier names one."""
        return max_epochs_of(self.end_epoch_at(steps_per_epoch))

    @property
    def max_epochs(self) -> int:
        """SparseML's definition: the ceiling of the latest start/end epoch any modifier names (-1 if none)."""
        return self.max_epochs_at(None)

    @property
    def end_epoch(self) -> float:
        """`end_epoch_at()` for a recipe counted in epochs (a step-based one needs `end_epoch_at(spe)`)."""
        return self.end_epoch_at(None)

    def num_stages(self) -> int:
        """SparseML's `num_stages()`: 1 for a recipe without stages."""
        return len(self.stages)

    def modifiers_of(self, kind: type[Modifier]) -> list[Modifier]:
        return [mod for mod in self.modifiers if isinstance(mod, kind)]

    # ----- composing -------------------------------------------------------------------------
    @classmethod
    def compose_staged(
        cls,
        base: Any,
        additional: Any,
        keep_original_epochs: bool = False,
        steps_per_epoch: int | None = None,
    ) -> Recipe:
        """SparseML's `compose_staged`: `additional`'s stages after `base`'s, in one recipe.

        Unless `keep_original_epochs`, `additional` is moved `base.max_epochs` later and every
        `end_epoch: -1` of `base` becomes that end, so the stages do not overlap. Stage names
        follow SparseML (`stage_0`/`stage_1`, `stage_<n+1>`, `pre_<first stage>`) and must not
        collide. A base or an additional recipe counted in steps needs `steps_per_epoch`.
        """
        base, additional = Recipe.load(base), Recipe.load(additional)
        base_stages, add_stages = _composed_names(base.stages, additional.stages)
        if not keep_original_epochs:
            end = base.max_epochs_at(steps_per_epoch)
            if end > 0:
                steps = end * steps_per_epoch if steps_per_epoch is not None else None
                base_stages = [_map_stage(st, lambda mod: _end_at(mod, end)) for st in base_stages]
                add_stages = [
                    _map_stage(st, lambda mod: mod.shifted(end, steps)) for st in add_stages
                ]
        metadata = {**(base.metadata or {}), **(additional.metadata or {})} or None
        return cls([*base_stages, *add_stages], {}, additional.version, None, metadata)

    # ----- writing ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The evaluated recipe as plain data with tagged modifiers (what `to_yaml` writes)."""

        def groups_of(stage: Stage) -> dict[str, Any]:
            return {
                group: [represent_tagged(mod.name, mod.recipe_fields()) for mod in mods]
                for group, mods in stage.groups.items()
            }

        data: dict[str, Any] = {"version": self.version or RECIPE_VERSION}
        if self.metadata:
            data[METADATA_KEY] = dict(self.metadata)
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

    def __str__(self) -> str:
        return self.to_yaml()


def _resolve_stage_variables(
    raw: Mapping[str, Any], global_vars: Mapping[str, Any], where: Any
) -> dict[str, Any]:
    """A stage's variables in file order, as SparseML reads them.

    In a stage variable's expression a name means, in this order: a stage variable defined on an
    earlier line, a global variable, a stage variable defined later. So in a stage that says
    `end_epoch_global: eval(end_epoch)` and then `end_epoch: 75`, under a global `end_epoch: 100`,
    `end_epoch_global` is 100; the stage's modifiers see `end_epoch` 75.
    """
    order = {name: index for index, name in enumerate(raw)}
    resolved: dict[str, Any] = {}
    resolving: list[str] = []

    def resolve(name: str) -> Any:
        if name in resolved:
            return resolved[name]
        if name in resolving:
            cycle = " -> ".join(resolving[resolving.index(name) :] + [name])
            raise RecipeError(f"variables refer to each other in a cycle: {cycle}", **where(name))
        position = order[name]

        def lookup(ref: str) -> Any:
            if ref in order and order[ref] < position:
                return resolve(ref)
            if ref in global_vars:
                return global_vars[ref]
            if ref in order and ref != name:
                return resolve(ref)
            known = sorted(set(global_vars) | (set(order) - {name}))
            raise RecipeError(
                f"eval refers to undefined variable '{ref}' (in variable '{name}'); "
                f"defined variables: {', '.join(known) or 'none'}"
            )

        resolving.append(name)
        try:
            resolved[name] = resolve_value(raw[name], lookup, where(name))
        finally:
            resolving.pop()
        return resolved[name]

    for name in raw:
        resolve(name)
    return {name: resolved[name] for name in raw}


def _composed_names(base: list[Stage], additional: list[Stage]) -> tuple[list[Stage], list[Stage]]:
    """Name the stages of a composed recipe as SparseML's compose_staged does; clashes are errors."""
    base_staged = not (len(base) == 1 and base[0].name is None)
    add_staged = not (len(additional) == 1 and additional[0].name is None)
    if not base_staged and not add_staged:
        base = [replace(base[0], name="stage_0")]
        additional = [replace(additional[0], name="stage_1")]
    elif base_staged and not add_staged:
        additional = [replace(additional[0], name=f"stage_{len(base) + 1}")]
    elif add_staged and not base_staged:
        base = [replace(base[0], name=f"pre_{additional[0].name}")]
    clash = sorted({st.name for st in base} & {st.name for st in additional})
    if clash:
        raise RecipeError(
            f"the recipes to compose share stage names {', '.join(map(str, clash))}; "
            "rename the stages of one of them"
        )
    return base, additional


def _map_stage(stage: Stage, change: Any) -> Stage:
    """`stage` with each spec's recipe fields replaced by `change(spec)` (validated again)."""
    groups = {}
    for group, specs in stage.groups.items():
        rebuilt = []
        for spec in specs:
            try:
                rebuilt.append(type(spec).model_validate(change(spec)).as_spec())
            except pydantic.ValidationError as err:
                raise RecipeError(
                    f"composing the recipes makes {spec.name} invalid: {err.errors()[0]['msg']}",
                    modifier=spec.name,
                ) from None
        groups[group] = tuple(rebuilt)
    return Stage(stage.name, groups, stage.variables)


def _end_at(spec: Modifier, end: float) -> dict[str, Any]:
    """SparseML: a base modifier that never ends (`end_epoch: -1`) ends where the base ends.

    Not a structural one (it overrides `apply_structure`: QAT, layer pruning): ending it would
    undo the structure the trained model holds (removed layers would come back on reload).
    """
    fields = spec.recipe_fields()
    structural = type(spec).apply_structure is not _base_apply_structure()
    if spec.end_epoch == -1 and getattr(spec, "end_step", None) is None and not structural:
        fields["end_epoch"] = float(end)
    return fields


def _base_apply_structure() -> Any:
    from sparseforge.modifiers.base import Modifier as BaseModifier

    return BaseModifier.apply_structure


def _line_of(mapping: Mapping, key: Any) -> int | None:
    return mapping.line_of(key) if isinstance(mapping, LineDict) else None


def _located(mapping: Mapping, file: str | None) -> Any:
    """Where a variable of `mapping` is defined, for resolve_variables' error messages."""
    return lambda name: {"file": file, "line": _line_of(mapping, name)}


def _split_tree(
    tree: Mapping[str, Any], file: str | None
) -> tuple[dict[str, Any], list[tuple[str | None, Mapping]]]:
    """The recipe's global variables and its stages; top-level groups make one unnamed stage."""
    global_raw: dict[str, Any] = {}
    raw_stages: list[tuple[str | None, Mapping]] = []
    top_groups: dict[str, Any] = {}
    for key, value in tree.items():
        _check_name(key, file, _line_of(tree, key))
        if key in _RESERVED_KEYS:
            continue
        if _is_group_key(key):
            top_groups[key] = value
        elif isinstance(value, Mapping) and any(_is_group_key(k) for k in value):
            raw_stages.append((str(key), value))
        else:
            _reject_hidden_modifiers(key, value, file, _line_of(tree, key))
            global_raw[key] = value
    if top_groups and raw_stages:
        raise RecipeError(
            "a recipe has either modifier groups at the top level or stages, not both "
            f"(groups: {', '.join(top_groups)}; stages: {', '.join(n for n, _ in raw_stages)})",
            file=file,
        )
    if top_groups:
        body = LineDict(top_groups)
        if isinstance(tree, LineDict):
            body.key_lines = {k: tree.line_of(k) for k in top_groups}
        raw_stages = [(None, body)]
    return global_raw, raw_stages


def _check_overrides(
    overrides: Mapping[str, Any],
    global_raw: Mapping[str, Any],
    raw_stages: list[tuple[str | None, Mapping]],
    file: str | None,
) -> None:
    """recipe_args may only set variables the recipe defines (globally or in a stage)."""
    stage_var_names = {
        k
        for _, body in raw_stages
        for k in body
        if not _is_group_key(k) and k not in _RESERVED_KEYS
    }
    unknown = sorted(set(overrides) - set(global_raw) - stage_var_names)
    if unknown:
        known = sorted(set(global_raw) | stage_var_names)
        raise RecipeError(
            f"recipe_args sets {', '.join(repr(k) for k in unknown)}, which the recipe does not define; "
            f"its variables are: {', '.join(known) or 'none'}",
            file=file,
        )


def _build_stage(
    stage_name: str | None,
    body: Mapping,
    overrides: Mapping[str, Any],
    global_vars: Mapping[str, Any],
    file: str | None,
) -> Stage:
    """One stage: its own variables (overridable) resolved over the globals, then its groups built."""
    stage_raw = {k: v for k, v in body.items() if not _is_group_key(k) and k not in _RESERVED_KEYS}
    for key, value in stage_raw.items():
        _check_name(key, file, _line_of(body, key))
        _reject_hidden_modifiers(key, value, file, _line_of(body, key))
    stage_raw = {k: overrides.get(k, v) for k, v in stage_raw.items()}
    own = _resolve_stage_variables(stage_raw, global_vars, _located(body, file))
    variables = {**global_vars, **own}
    groups: dict[str, tuple[Modifier, ...]] = {
        group_name: tuple(
            _build_group(group_name, entries, variables, file, _line_of(body, group_name))
        )
        for group_name, entries in body.items()
        if _is_group_key(group_name)
    }
    return Stage(stage_name, groups, own)


def _check_name(key: Any, file: str | None, line: int | None) -> None:
    """Variables, groups and stages are named by text: `&x: 1` (a key lost to an anchor) or `1: 2` is a mistake."""
    if not isinstance(key, str):
        raise RecipeError(
            f"the key {key!r} is not a name; variables, modifier groups and stages need text names",
            file=file,
            line=line,
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
        if hasattr(entry, "as_spec"):  # an already built Modifier (dict sources)
            built.append(entry.as_spec())
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
        ((name, fields),) = entry.items()
        if isinstance(name, str) and isinstance(fields, (Mapping, type(None))):
            line_fields = LineDict(fields or {})
            return ModifierSpec(name=name.lstrip("!"), fields=line_fields)
    return entry


def build_modifier(
    spec: ModifierSpec, variables: Mapping[str, Any], file: str | None = None
) -> Modifier:
    """Resolve a `!Name` entry's eval() values and validate its fields into a Modifier spec."""
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
                err.message,
                file=file,
                line=spec.fields.line_of(key),
                modifier=spec.name,
                field=str(key),
            ) from None
    try:
        built = cls.model_validate(fields)
    except pydantic.ValidationError as err:
        raise _validation_error(err, cls, spec, file) from None
    except (
        TypeError,
        ArithmeticError,
        LookupError,
    ) as err:  # a validator met a value of the wrong type
        raise RecipeError(
            f"a field has a value of the wrong type ({type(err).__name__}: {one_line(err, 120)})",
            file=file,
            line=spec.line,
            modifier=spec.name,
        ) from None
    built._rt.is_spec = True
    return built


def _validation_error(
    err: pydantic.ValidationError, cls: type[Modifier], spec: ModifierSpec, file: str | None
) -> RecipeError:
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
    extra = (
        f" ({len(err.errors()) - 1} more problem(s) in this modifier)"
        if len(err.errors()) > 1
        else ""
    )
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
    return _json_recipe_args(text) if text.startswith("{") else _key_value_recipe_args(text)


def _json_recipe_args(text: str) -> dict[str, Any]:
    """recipe_args given as a JSON object."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecipeError(
            f"recipe_args is not valid JSON: {err.msg} at column {err.colno}"
        ) from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        raise RecipeError(f"recipe_args is not usable JSON: {one_line(err, 120)}") from None
    except RecursionError:
        parsed = None  # nested too deeply for the JSON reader: refused just below
    if parsed is None or _nesting_depth(parsed) > MAX_YAML_DEPTH:
        raise RecipeError(f"recipe_args JSON nests more than {MAX_YAML_DEPTH} levels deep")
    if not isinstance(parsed, dict):
        raise RecipeError("recipe_args JSON must be an object of variable: value")
    return {str(k): as_number(v) for k, v in parsed.items()}


def _key_value_recipe_args(text: str) -> dict[str, Any]:
    """recipe_args given as `k=v,k2=v2`; a value that is no YAML scalar stays text."""
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
                stack.extend(
                    (child, depth + 1)
                    for child in (item.values() if isinstance(item, dict) else item)
                )
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
