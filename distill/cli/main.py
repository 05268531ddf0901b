"""The `distill` command line. Each command's help is its function's docstring."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from distill.errors import DistillError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit status 2, like every other input error
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_fit(args: argparse.Namespace) -> None:
    """Train a student as the recipe says; the teacher is trained first when the recipe asks for it.

    Overrides are `key=value` pairs on any recipe key, e.g. `trainer.max_epochs=5 loss.terms.kd.temperature=2`.
    The run folder (runs/<name>/version_N) gets the resolved recipe, checkpoints last and best, and metrics.
    """
    from distill.config import load_recipe, to_yaml
    from distill.engine.runs import RECIPE_FILE, is_global_zero, last_checkpoint, latest_run_dir

    resume_dir = None
    if args.resume is not None:
        if args.resume == "latest":
            if args.recipe is None:
                raise DistillError("--resume without a run folder needs --recipe to find the latest run")
            named = load_recipe(args.recipe, args.overrides)
            resume_dir = latest_run_dir(named.recipe.run.root, named.recipe.run.name or named.name)
        else:
            resume_dir = Path(args.resume)
        last_checkpoint(resume_dir)  # a clear error before anything else when there is nothing to resume
        loaded = load_recipe(str(resume_dir / RECIPE_FILE), args.overrides)
    elif args.recipe is None:
        raise DistillError("fit needs --recipe NAME_OR_PATH (see `distill recipes`)")
    else:
        loaded = load_recipe(args.recipe, args.overrides)
    if args.print:
        print(to_yaml(loaded.resolved), end="")
        return
    from distill.cli.report import print_summary
    from distill.engine.pipeline import fit

    result = fit(loaded, resume=resume_dir)
    if is_global_zero():  # once, not once per rank
        print_summary(loaded.name, result.metrics, str(result.run_dir))


def _evaluate(args: argparse.Namespace, stage: str) -> None:
    from distill.config import from_dict, load_recipe
    from distill.config.load import apply_overrides
    from distill.engine.pipeline import evaluate, recipe_of_checkpoint
    from distill.engine.runs import is_global_zero

    checkpoint = Path(args.checkpoint)
    if args.recipe is not None:
        loaded = load_recipe(args.recipe, args.overrides)
    else:
        loaded = from_dict(apply_overrides(recipe_of_checkpoint(checkpoint), args.overrides), f"{checkpoint} recipe")
    metrics = evaluate(loaded, checkpoint, stage)
    for key, value in sorted(metrics.items()) if is_global_zero() else ():
        print(f"{key}\t{value:.4f}")


def cmd_validate(args: argparse.Namespace) -> None:
    """Evaluate a checkpoint on the validation split (the recipe stored in the checkpoint unless --recipe is given)."""
    _evaluate(args, "validate")


def cmd_test(args: argparse.Namespace) -> None:
    """Evaluate a checkpoint on the test split (the recipe stored in the checkpoint unless --recipe is given)."""
    _evaluate(args, "test")


def cmd_compare(args: argparse.Namespace) -> None:
    """Run every variant of a comparison recipe over several seeds and print one table of student accuracy and
    agreement with the teacher (mean ± standard deviation over seeds).

    Overrides apply to the comparison's base recipe, e.g. `trainer.max_epochs=5`.
    """
    from distill.engine.compare import load_comparison, print_comparison, run_comparison

    comparison, variants, path = load_comparison(args.recipe, args.overrides)
    folder, results = run_comparison(comparison, variants, path, seeds=args.seeds)
    print_comparison(f"{path.stem}: {comparison.description}", results, folder)


def cmd_recipes(args: argparse.Namespace) -> None:
    """List the bundled recipes with their one-line descriptions."""
    from distill.config.load import bundled_recipes, read_yaml

    for name, path in bundled_recipes().items():
        print(f"{name:32s} {read_yaml(path).get('description', '')}")


def cmd_losses(args: argparse.Namespace) -> None:
    """List the loss terms a recipe can use under `loss.terms`, with their arguments and defaults."""
    from distill.tasks.loss_terms import LOSSES

    for name, cls in LOSSES.items():
        summary = (inspect.getdoc(cls) or "").splitlines()[0]
        params = [
            f"{p.name}={p.default!r}" for p in inspect.signature(cls).parameters.values() if p.default is not p.empty
        ]
        print(f"{name:12s} {cls.__module__}.{cls.__name__}({', '.join(params)})\n{'':12s} {summary}")


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got '{text}'") from None


def _add(sub: argparse._SubParsersAction, name: str, func: Callable) -> argparse.ArgumentParser:
    doc = inspect.getdoc(func) or ""
    parser = sub.add_parser(
        name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="distill", description=inspect.getdoc(sys.modules["distill"]))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    fit = _add(sub, "fit", cmd_fit)
    fit.add_argument("--recipe", help="a bundled recipe name (see `distill recipes`) or a YAML file")
    fit.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (default: the latest run of the recipe)",
    )
    fit.add_argument("--print", action="store_true", help="print the fully resolved recipe and exit without running")
    for name, func in (("validate", cmd_validate), ("test", cmd_test)):
        evaluate = _add(sub, name, func)
        evaluate.add_argument("--checkpoint", required=True, help="a checkpoint written by distill fit")
        evaluate.add_argument("--recipe", help="build the run from this recipe instead of the checkpoint's")
    compare = _add(sub, "compare", cmd_compare)
    compare.add_argument("--recipe", required=True, help="a comparison recipe (base recipe plus variants)")
    compare.add_argument(
        "--seeds", type=parse_seeds, help="comma-separated seeds to run, e.g. 0,1,2 (default: the recipe's)"
    )
    for command in (fit, compare, sub.choices["validate"], sub.choices["test"]):
        command.add_argument(
            "--allow-module",
            action="append",
            default=[],
            metavar="MODULE",
            help="let the recipe use `MODULE:attribute` components (repeatable)",
        )
        command.add_argument(
            "--allow-remote-code",
            action="store_true",
            help="let Hugging Face models with trust_remote_code: true run their repository's code",
        )
        command.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key")
    _add(sub, "recipes", cmd_recipes)
    _add(sub, "losses", cmd_losses)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from distill.registry import allow_modules, allow_remote_code

    allow_modules(getattr(args, "allow_module", []))
    allow_remote_code(getattr(args, "allow_remote_code", False))
    try:
        args.func(args)
    except DistillError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
