"""`sparseforge ...` subcommands.

Each command family lives beside the code it drives and is imported only when used, so
`sparseforge recipe check` does not pay for transformers. Library errors are printed in one
line without a traceback (exit 2); `SPARSEFORGE_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sparseforge.errors import RecipeError, SparseforgeError

if TYPE_CHECKING:
    from sparseforge.recipe import Recipe

# subcommand -> (module:function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "recipe": ("sparseforge.cli:recipe_main", "check a recipe and print its schedule"),
    "analyze": (
        "sparseforge.sparsity:cli_main",
        "print per-parameter sparsity of a model or checkpoint",
    ),
    "compact": (
        "sparseforge.compact:cli_main",
        "remove pruned heads, FFN neurons and layers from a saved model for real",
    ),
    "oneshot": (
        "sparseforge.transformers.oneshot_cli:cli_main",
        "compress a trained model without training: SparseGPT, Wanda, PTQ",
    ),
    "export": (
        "sparseforge.export.cli:cli_main",
        "export a trained model to a verified ONNX deployment folder",
    ),
    "train": (
        "sparseforge.transformers.cli:cli_main",
        "train with a recipe: text-classification, token-classification, ...",
    ),
    "zoo": ("sparseforge.zoo:cli_main", "manage zoo: stubs in the local registry"),
    "demo": (
        "sparseforge.demo:cli_main",
        "offline end-to-end demo: MiniLM sparse transfer on BBC News",
    ),
}

# `recipe check` simulates every optimizer step for its table; a recipe's 1e300 epochs would never end.
MAX_TABULATED_STEPS = 1_000_000
# Rows drawn by `recipe check --plot`: enough that cubic ramps look cubic and LR resets look like jumps.
PLOT_SAMPLES = 200


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sparseforge COMMAND [ARGS]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from sparseforge import __version__

        print(f"sparseforge {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"sparseforge: unknown command '{command}'; commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=os.environ.get("SPARSEFORGE_LOG_LEVEL", "INFO"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    target, _ = COMMANDS[command]
    module_name, function_name = target.split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return int(function(rest) or 0)
    except SparseforgeError as err:
        if os.environ.get("SPARSEFORGE_DEBUG"):
            raise
        message = " ".join(
            line.strip() for line in str(err).splitlines() if line.strip()
        )  # one line, always
        print(f"sparseforge {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparseforge {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sparseforge ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def recipe_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sparseforge recipe", description="Work with recipes.")
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate a recipe and print its modifiers and schedule")
    check.add_argument("file", help="recipe file (.yaml, .yml, .md) or zoo: stub")
    check.add_argument(
        "--recipe_args", "--recipe-args", default=None, help="variable overrides: JSON or k=v,k2=v2"
    )
    check.add_argument(
        "--steps_per_epoch",
        "--steps-per-epoch",
        type=int,
        default=100,
        help="steps per epoch for step-based fields and the table (default 100)",
    )
    check.add_argument(
        "--yaml", action="store_true", help="also print the evaluated recipe as YAML"
    )
    check.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="draw the schedule (LR, sparsity, events) to a PNG file (needs matplotlib)",
    )
    check.add_argument(
        "--log",
        default=None,
        metavar="RUN",
        help="with --plot: overlay the LR and sparsity a training run logged (its output folder or trainer_state.json)",
    )
    args = parser.parse_args(list(argv))
    if args.steps_per_epoch < 1:
        parser.error("--steps_per_epoch must be >= 1")
    if args.log and not args.plot:
        parser.error("--log goes with --plot")

    from sparseforge.recipe import Recipe
    from sparseforge.schedule import describe_recipe, format_schedule, schedule_table
    from sparseforge.zoo import resolve

    recipe = Recipe.load(resolve(args.file, "recipe"), args.recipe_args)
    if not recipe.modifiers:
        raise RecipeError(
            "the recipe defines no modifiers (groups are top-level keys whose name contains 'modifiers')",
            file=args.file,
        )
    print(describe_recipe(recipe, args.file, args.steps_per_epoch))
    print(f"\nschedule (steps_per_epoch={args.steps_per_epoch}):")
    steps = _schedule_steps(recipe, args.steps_per_epoch)
    rows = None
    if steps > MAX_TABULATED_STEPS:
        print(
            f"not tabulated: the schedule runs {steps:.3g} steps, more than the {MAX_TABULATED_STEPS:,} `recipe check` simulates"
        )
    else:
        rows = schedule_table(recipe, args.steps_per_epoch)
        print(format_schedule(rows))
    if args.plot:
        if rows is None:
            raise SparseforgeError(
                f"--plot: the schedule runs {steps:.3g} steps, too many to simulate and draw"
            )
        from sparseforge.schedule_plot import plot_schedule, read_log_history

        measured = read_log_history(args.log) if args.log else None
        drawn = schedule_table(recipe, args.steps_per_epoch, samples=PLOT_SAMPLES)
        written = plot_schedule(drawn, args.plot, title=str(args.file), measured=measured)
        print(f"\nschedule plot written to {written}")
    if args.yaml:
        print("\n" + recipe.to_yaml())
    return 0


def _schedule_steps(recipe: Recipe, steps_per_epoch: int) -> float:
    """The last optimizer step any modifier names (epochs or steps; stages hold absolute epochs)."""
    return max(recipe.end_epoch_at(steps_per_epoch), 0.0) * steps_per_epoch


if __name__ == "__main__":
    sys.exit(main())
