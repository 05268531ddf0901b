"""The `distill` command line: its parser and entry point. Each command's help is its function's docstring
(`distill.cli.commands`)."""

from __future__ import annotations

import argparse
import atexit
import gc
import inspect
import os
import sys
import warnings
from collections.abc import Callable

from distill.cli.commands import (
    cmd_compare,
    cmd_export,
    cmd_fit,
    cmd_keys,
    cmd_losses,
    cmd_recipes,
    cmd_tasks,
    cmd_test,
    cmd_validate,
)
from distill.errors import DistillError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit status 2, like every other input error
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    compare.add_argument(
        "--recipe",
        required=True,
        help="a comparison recipe (base recipe plus variants), or any recipe to run over seeds",
    )
    compare.add_argument(
        "--seeds",
        type=parse_seeds,
        help="comma-separated seeds to run, e.g. 0,1,2 (default: the comparison's, or 0,1,2,3,4 for a recipe)",
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
    export = _add(sub, "export", cmd_export)
    export.add_argument("--checkpoint", required=True, help="a checkpoint written by distill fit (e.g. best.ckpt)")
    export.add_argument("--out", required=True, help="a new (or empty) folder to write the student to")
    export.add_argument(
        "--adapter-only",
        action="store_true",
        help="a LoRA run with an hf: student: write its adapters as a PEFT folder (for vLLM --enable-lora) instead "
        "of the merged model",
    )
    export.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),  # distill.export.DTYPES, not imported: the CLI starts lazily
        default=None,
        help="the dtype of the written weights (default: the student's own, float32 unless it trained in another)",
    )
    _add(sub, "recipes", cmd_recipes)
    _add(sub, "losses", cmd_losses)
    _add(sub, "tasks", cmd_tasks)
    keys = _add(sub, "keys", cmd_keys)
    keys.add_argument("section", nargs="?", help="a recipe key whose keys to list (default: all of them)")
    return parser


def one_line_warnings(formatted: Callable[..., str]) -> Callable[..., str]:
    """distill's own warnings (rows cut, pairs dropped) as one line each, as its errors are; a library's keep their
    usual form (file, line and source), which says where to look."""
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the distill package

    def format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' signature)
        if os.path.abspath(filename).startswith(own + os.sep):
            return f"distill: warning: {message}\n"
        return formatted(message, category, filename, lineno, line)

    format_warning.one_line = True
    return format_warning


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from distill.registry import allow_modules, allow_remote_code

    allowed = getattr(args, "allow_module", [])
    allow_modules(allowed)
    if allowed and os.getcwd() not in sys.path:
        # an allowed module is looked for in the working folder too, as `python` would: the `distill` script's sys.path
        # holds its own folder instead. Appended, so an installed package of the same name wins.
        sys.path.append(os.getcwd())
    allow_remote_code(getattr(args, "allow_remote_code", False))
    if not getattr(warnings.formatwarning, "one_line", False):  # main may run more than once in a process
        warnings.formatwarning = one_line_warnings(warnings.formatwarning)
    try:
        args.func(args)
    except DistillError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`distill losses | head`): not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (the interpreter flushes stdout at exit)
        return 0
    if argv is None:  # the process's own command line, done: the process ends now
        # Python's last garbage collection at exit walks every object torch and Lightning made (1-2 s) to free memory
        # the OS frees anyway; frozen, they are skipped (atexit handlers and flushes still run). Not after an error:
        # the other ranks of a torchrun job must still have the time to print theirs before torchrun stops them.
        atexit.register(gc.freeze)
    return 0


if __name__ == "__main__":
    sys.exit(main())
