"""`zoo:` stubs resolved offline, through a local registry and the recipes sparseforge ships.

SparseZoo names models and recipes by stubs such as
`zoo:nlp/sentiment_analysis/obert-base/pytorch/huggingface/sst2/pruned90_quant-none`; the
recipes and commands people copy use them. sparseforge never downloads: a stub names a folder,
first in the user's registry (`$SPARSEFORGE_ZOO`, else `$XDG_CACHE_HOME/sparseforge/zoo`, else
`~/.cache/sparseforge/zoo`), then among the recipes shipped in `sparseforge/recipes/`. An entry
folder holds a recipe (`recipe.yaml|yml|md`), a model (`model/`, a Hugging Face folder), or both,
since SparseZoo uses one stub for both (a `base-none` stub is a dense recipe and a teacher).

    sparseforge zoo add STUB PATH     copy a model folder or a recipe file into the registry
    sparseforge zoo list [TEXT]       the known stubs, user and shipped
    sparseforge zoo show STUB         where a stub resolves and what it holds

A stub can never name a path outside its registry: segments are plain names (no `..`, no
separators) and the resolved path, symlinks followed, must stay inside the registry root.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from sparseforge.errors import ZooError

logger = logging.getLogger(__name__)

STUB_PREFIX = "zoo:"
ENV_VAR = "SPARSEFORGE_ZOO"
SHIPPED_ROOT = Path(__file__).resolve().parent / "recipes"
MODEL_DIR = "model"
RECIPE_SUFFIXES = (".yaml", ".yml", ".md")
RECIPE_FILES = tuple(f"recipe{suffix}" for suffix in RECIPE_SUFFIXES)
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_RECIPE_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class ZooEntry:
    """One stub found in a registry root: where it lives and what it holds."""

    stub: str
    source: str  # "user" or "shipped"
    path: Path
    recipe: Path | None
    model: Path | None

    @property
    def contents(self) -> str:
        parts = [name for name, item in (("model", self.model), ("recipe", self.recipe)) if item]
        return "+".join(parts) or "empty"


def registry_root() -> Path:
    """The user registry folder: `$SPARSEFORGE_ZOO`, else the XDG cache, else ~/.cache."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "sparseforge" / "zoo"


def _roots() -> list[tuple[str, Path]]:
    return [("user", registry_root()), ("shipped", SHIPPED_ROOT)]


def is_stub(value: object) -> bool:
    """True for a `zoo:` string (model, teacher or recipe argument)."""
    return isinstance(value, str) and value.strip().startswith(STUB_PREFIX)


def parse_stub(stub: str) -> tuple[tuple[str, ...], str | None]:
    """Split `zoo:a/b/c?recipe_type=x` into validated path segments and the optional recipe type.

    Segments are plain names: letters, digits, `_ . -`, not starting with a dot, so no `..`,
    absolute part or separator can reach the file system.
    """
    text = stub.strip()
    if not text.startswith(STUB_PREFIX):
        raise ZooError(f"'{stub}' is not a zoo stub (it must start with '{STUB_PREFIX}')")
    body, _, query = text[len(STUB_PREFIX) :].partition("?")
    segments = tuple(body.split("/"))
    bad = [seg for seg in segments if not _SEGMENT.match(seg)]
    if len(segments) < 2 or bad:
        why = f"segment {bad[0]!r} is not allowed" if bad else "it needs at least two segments"
        raise ZooError(
            f"malformed stub '{stub}': {why}; stubs look like "
            "zoo:nlp/<domain>/<arch>/pytorch/huggingface/<dataset>/<variant> with segments of letters, digits, '_', '.', '-'"
        )
    recipe_type = None
    if query:
        params = parse_qs(query)
        unknown = sorted(set(params) - {"recipe_type"})
        recipe_type = params.get("recipe_type", [None])[-1]
        if unknown or (recipe_type is not None and not _RECIPE_TYPE.match(recipe_type)):
            raise ZooError(f"malformed stub '{stub}': the only query accepted is ?recipe_type=NAME")
    return segments, recipe_type


def _canonical(segments: Sequence[str]) -> str:
    return STUB_PREFIX + "/".join(segments)


def _inside(root: Path, path: Path) -> Path | None:
    """`path` with symlinks resolved if it exists and stays inside `root`, else None."""
    if not path.exists():
        return None
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        logger.warning("zoo: ignoring %s, which resolves outside the registry %s", path, root)
        return None
    return real


def _entry_in(
    source: str, root: Path, segments: Sequence[str], recipe_type: str | None = None
) -> ZooEntry | None:
    folder = _inside(root, root.joinpath(*segments))
    if folder is None or not folder.is_dir():
        return None
    names = [f"recipe_{recipe_type}{suffix}" for suffix in RECIPE_SUFFIXES] if recipe_type else []
    recipe = next(
        (
            found
            for name in names + list(RECIPE_FILES)
            if (found := _inside(root, folder / name)) and found.is_file()
        ),
        None,
    )
    model = _inside(root, folder / MODEL_DIR)
    if model is not None and not model.is_dir():
        model = None
    if recipe is None and model is None:
        return None
    return ZooEntry(_canonical(segments), source, folder, recipe, model)


def lookup(stub: str) -> list[ZooEntry]:
    """Every entry for `stub`, user registry first (it shadows a shipped recipe of the same stub)."""
    segments, recipe_type = parse_stub(stub)
    found = [_entry_in(source, root, segments, recipe_type) for source, root in _roots()]
    return [entry for entry in found if entry is not None]


def list_entries() -> list[ZooEntry]:
    """Every stub in the user registry and among the shipped recipes, sorted by stub."""
    entries: dict[tuple[str, str], ZooEntry] = {}
    for source, root in _roots():
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            # do not walk into model folders (weights); entries are folders holding recipe/model
            has_model = MODEL_DIR in dirs
            dirs[:] = sorted(d for d in dirs if d != MODEL_DIR and _SEGMENT.match(d))
            if not has_model and not any(name in RECIPE_FILES for name in files):
                continue
            rel = Path(folder).relative_to(root).parts
            if len(rel) < 2:
                continue
            entry = _entry_in(source, root, rel)
            if entry is not None:
                entries[(entry.stub, source)] = entry
    return sorted(entries.values(), key=lambda e: (e.stub, e.source != "user"))


def _unknown(stub: str, what: str) -> ZooError:
    known = sorted({entry.stub for entry in list_entries()})
    segments, _ = parse_stub(stub)
    near = difflib.get_close_matches(_canonical(segments), known, n=3, cutoff=0.6)
    hint = (
        f"; nearest known: {', '.join(near)}"
        if near
        else (f"; {len(known)} stubs are known" if known else "")
    )
    return ZooError(
        f"unknown {what} stub '{stub}' (sparseforge does not download; add it with "
        f"`sparseforge zoo add {stub} PATH`, registry {registry_root()}){hint}"
    )


def resolve_recipe(stub: str) -> str:
    """The recipe file a stub names (user registry first, then the shipped recipes)."""
    entries = lookup(stub)
    for entry in entries:
        if entry.recipe is not None:
            return str(entry.recipe)
    if entries:
        raise ZooError(
            f"stub '{stub}' holds a model but no recipe ({entries[0].path}); add one with `sparseforge zoo add {stub} RECIPE_FILE`"
        )
    raise _unknown(stub, "recipe")


def resolve_model(stub: str) -> str:
    """The Hugging Face model folder a stub names."""
    entries = lookup(stub)
    for entry in entries:
        if entry.model is not None:
            return str(entry.model)
    if entries:
        raise ZooError(
            f"stub '{stub}' holds a recipe but no model ({entries[0].recipe}); sparseforge does not download "
            f"models: add one with `sparseforge zoo add {stub} MODEL_DIR`"
        )
    raise _unknown(stub, "model")


def resolve(stub_or_path: str | os.PathLike, kind: str | None = None) -> str:
    """A local path for a model, teacher or recipe argument: stubs resolve, anything else passes through.

    The one resolver every edge uses (the task CLIs, the teacher loader, `recipe check`,
    `oneshot`), so the rest of the code sees paths only. `kind` is "model", "teacher" (a model)
    or "recipe"; without it a stub gives its model if it has one, else its recipe. Non-stub values
    (paths, hub names, "disable", "self") are returned unchanged.
    """
    if not is_stub(stub_or_path):
        return stub_or_path  # type: ignore[return-value]
    stub = str(stub_or_path)
    if kind in ("model", "teacher"):
        return resolve_model(stub)
    if kind == "recipe":
        return resolve_recipe(stub)
    if kind is not None:
        raise ValueError(f"kind must be 'model', 'teacher', 'recipe' or None, got {kind!r}")
    entries = lookup(stub)
    for entry in entries:
        if entry.model is not None:
            return str(entry.model)
    for entry in entries:
        if entry.recipe is not None:
            return str(entry.recipe)
    raise _unknown(stub, "zoo")


def add(stub: str, path: str | os.PathLike, force: bool = False) -> ZooEntry:
    """Copy a model folder (as `model/`) or a recipe file (as `recipe.<ext>`) into the user registry.

    The copy is made beside its destination and renamed into place, so an interrupted add leaves
    no half-written entry. Symlinks inside a model folder are copied as the files they point to.
    """
    segments, recipe_type = parse_stub(stub)
    if recipe_type:
        raise ZooError(f"add takes a stub without a query, got '{stub}'")
    source = Path(path).expanduser()
    if not source.exists():
        raise ZooError(f"zoo add: {source} does not exist")
    root = registry_root()
    entry_dir = root.joinpath(*segments)
    root.mkdir(parents=True, exist_ok=True)
    # The entry's parents may exist already (other stubs); none of them may lead outside the root.
    existing = next((p for p in [entry_dir, *entry_dir.parents] if p.exists()), root)
    if _inside(root, existing) is None:
        raise ZooError(f"zoo add: {entry_dir} would resolve outside the registry {root}")
    entry_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise ZooError(f"zoo add: {source} is not a Hugging Face model folder (no config.json)")
        target = entry_dir / MODEL_DIR
        if target.exists() and not force:
            raise ZooError(
                f"zoo add: {_canonical(segments)} already has a model; pass --force to replace it"
            )
        staging = Path(tempfile.mkdtemp(prefix=".add-", dir=entry_dir))
        try:
            shutil.copytree(source, staging / MODEL_DIR, symlinks=False)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / MODEL_DIR, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        suffix = source.suffix.lower()
        if suffix not in RECIPE_SUFFIXES:
            raise ZooError(
                f"zoo add: {source} is neither a model folder nor a recipe file ({', '.join(RECIPE_SUFFIXES)})"
            )
        existing_recipes = [
            entry_dir / name for name in RECIPE_FILES if (entry_dir / name).exists()
        ]
        if existing_recipes and not force:
            raise ZooError(
                f"zoo add: {_canonical(segments)} already has a recipe; pass --force to replace it"
            )
        from sparseforge.recipe import Recipe

        Recipe.load(str(source))  # a broken recipe is refused now, not at training time
        staging_file = entry_dir / f".recipe{suffix}.tmp"
        shutil.copyfile(source, staging_file)
        for old in existing_recipes:
            old.unlink()
        os.replace(staging_file, entry_dir / f"recipe{suffix}")
    entry = _entry_in("user", root, segments)
    assert entry is not None
    return entry


def remove(stub: str) -> Path:
    """Delete a stub's entry from the user registry (shipped recipes cannot be removed)."""
    segments, _ = parse_stub(stub)
    entry = _entry_in("user", registry_root(), segments)
    if entry is None:
        raise _unknown(stub, "user registry")
    shutil.rmtree(entry.path)
    return entry.path


# ----- CLI -----------------------------------------------------------------------------------
def cli_main(argv: Sequence[str]) -> int:
    """`sparseforge zoo add|list|show|remove`."""
    parser = argparse.ArgumentParser(
        prog="sparseforge zoo", description="Manage zoo: stubs in the local registry."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p_add = sub.add_parser(
        "add", help="copy a model folder or a recipe file into the registry under STUB"
    )
    p_add.add_argument("stub")
    p_add.add_argument(
        "path", help="Hugging Face model folder (with config.json) or recipe file (.yaml/.yml/.md)"
    )
    p_add.add_argument("--force", action="store_true", help="replace what the stub already holds")
    p_list = sub.add_parser("list", help="list known stubs (user registry and shipped recipes)")
    p_list.add_argument("contains", nargs="?", default=None, help="only stubs containing this text")
    p_show = sub.add_parser("show", help="show where a stub resolves and what it holds")
    p_show.add_argument("stub")
    p_remove = sub.add_parser("remove", help="delete a stub from the user registry")
    p_remove.add_argument("stub")
    args = parser.parse_args(list(argv))

    if args.action == "add":
        entry = add(args.stub, args.path, force=args.force)
        print(f"added {entry.stub} ({entry.contents}) at {entry.path}")
    elif args.action == "list":
        entries = [e for e in list_entries() if not args.contains or args.contains in e.stub]
        print(f"registry: {registry_root()} (set {ENV_VAR} to change)")
        if not entries:
            print("no stubs" + (f" containing '{args.contains}'" if args.contains else ""))
        width = max((len(e.stub) for e in entries), default=0)
        for entry in entries:
            print(f"{entry.stub:<{width}}  {entry.contents:<12}  {entry.source}")
    elif args.action == "show":
        entries = lookup(args.stub)
        if not entries:
            raise _unknown(args.stub, "zoo")
        for entry in entries:
            shadow = " (shadowed by the user registry)" if entry is not entries[0] else ""
            print(f"{entry.stub}  [{entry.source}]{shadow}")
            print(f"  folder: {entry.path}")
            print(f"  recipe: {entry.recipe or 'none'}")
            print(f"  model:  {entry.model or 'none'}")
            if entry.model is not None:
                files = sorted(p.name for p in entry.model.iterdir())
                print(f"          {', '.join(files)}")
    else:
        path = remove(args.stub)
        print(f"removed {args.stub} ({path})")
    return 0
