"""The `distill` commands: each parses nothing and prints what the engine returns. Imports are lazy so that
`distill --help` stays instant."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

from distill.errors import DistillError


def cmd_fit(args: argparse.Namespace) -> None:
    """Train a student as the recipe says; the teacher is trained first when the recipe asks for it.

    Overrides are `key=value` pairs on any recipe key, e.g. `trainer.max_epochs=5 loss.terms.kd.temperature=2`,
    applied in order: `key={...}` replaces the mapping at key, `~key` deletes a key (it takes its default), and
    `key=null` deletes a named entry such as `loss.terms.kd`. `distill keys` lists every key.
    The run folder (runs/<name>/version_N) gets the resolved recipe, checkpoints last and best, and metrics.
    """
    from distill.config import load_recipe, to_yaml
    from distill.engine.run_folder import RunFolder
    from distill.engine.runs import is_global_zero, last_checkpoint, latest_run_dir

    last = None
    if args.resume is not None:
        if args.resume == "latest":
            if args.recipe is None:
                raise DistillError("--resume without a run folder needs --recipe to find the latest run")
            named = load_recipe(args.recipe, args.overrides)
            resume_dir = latest_run_dir(named.recipe.run.root, named.recipe.run.name or named.name)
        else:
            resume_dir = Path(args.resume)
        last = last_checkpoint(resume_dir)  # chosen once: last.ckpt, or previous.ckpt when last.ckpt is unreadable
        loaded = RunFolder(resume_dir).resumed(last, args.overrides)
    elif args.recipe is None:
        raise DistillError("fit needs --recipe NAME_OR_PATH (see `distill recipes`)")
    else:
        loaded = load_recipe(args.recipe, args.overrides)
    if args.print:
        print(to_yaml(loaded.resolved), end="")
        return
    from distill.cli.report import print_summary
    from distill.engine.pipeline import fit
    from distill.tasks import task_spec

    result = fit(loaded, resume_from=last)
    if is_global_zero():  # once, not once per rank
        title = loaded.recipe.run.name or loaded.name
        print_summary(title, result.metrics, task_spec(loaded.recipe.task).summary, result.run_dir)


def _evaluate(args: argparse.Namespace, stage: str) -> None:
    from distill.cli.report import print_summary
    from distill.config import from_dict, load_recipe
    from distill.engine.pipeline import evaluate
    from distill.engine.run_folder import RunCheckpoint, RunFolder
    from distill.engine.runs import is_global_zero
    from distill.tasks import task_spec

    checkpoint = RunCheckpoint.read(args.checkpoint)
    if args.recipe is not None:  # another recipe, with the frozen models still those the student learned from
        given = load_recipe(args.recipe, args.overrides)
        loaded = from_dict(checkpoint.pinned(given.resolved), f"{given.path} (pinned to {checkpoint.path})", given.path)
    else:
        loaded = checkpoint.loaded(args.overrides)
    metrics = evaluate(checkpoint, stage, loaded)
    if is_global_zero():
        split = "val" if stage == "validate" else "test"
        title = f"{stage} of {checkpoint.path.name}"
        print_summary(title, metrics, task_spec(loaded.recipe.task).summary, RunFolder.of(checkpoint.path).path, split)


def cmd_validate(args: argparse.Namespace) -> None:
    """Evaluate a checkpoint on the validation split (the recipe stored in the checkpoint unless --recipe is given)."""
    _evaluate(args, "validate")


def cmd_test(args: argparse.Namespace) -> None:
    """Evaluate a checkpoint on the test split (the recipe stored in the checkpoint unless --recipe is given)."""
    _evaluate(args, "test")


def cmd_export(args: argparse.Namespace) -> None:
    """Write a finished run's student where its users load it from, and check it by loading it back.

    The student is rebuilt from the checkpoint alone (its recipe, the sizes and tokenizer the run recorded, its
    weights): neither the data nor the teacher is read. A Hugging Face student becomes a save_pretrained folder
    (LoRA merged) with the run's tokenizer, chat template and end-of-turn token, or with --adapter-only its LoRA
    adapters as a PEFT folder; a speculative-decoding draft an EAGLE-layout folder (read with its target); any other
    student model.safetensors (its own parameter names) and distill_model.json (its architecture).
    """
    from distill.export import export_run

    exported = export_run(args.checkpoint, args.out, adapter_only=args.adapter_only, dtype=args.dtype)
    kinds = {
        "hf": "Hugging Face folder",
        "adapter": "PEFT adapter folder",
        "safetensors": "safetensors weights",
        "eagle": "EAGLE draft",
    }
    dtype = str(exported.dtype).removeprefix("torch.")
    print(f"exported the student to {exported.folder} ({kinds[exported.kind]}, {dtype}): {', '.join(exported.files)}")
    details = exported.details
    if exported.kind == "eagle":
        print(
            f"read back and decoded prompts with the target: accepted length {details['accepted_length']:.3f}"
            f" as in the run, lossless on {details['lossless']:.0%}; {exported.parameters:,} parameters"
        )
        return
    print(
        f"read back and compared with the run's student on probe inputs: largest output difference "
        f"{exported.max_difference:.3g} (tolerance {exported.tolerance:.3g}); {exported.parameters:,} parameters, "
        f"{exported.trainable:,} trained"
    )
    if exported.kind == "adapter":
        print(f"base model: {details['base']} (adapter_config.json's base_model_name_or_path)")
    if details.get("eos_token_id") is not None:
        print(f"generation stops at token ids {details['eos_token_id']} (generation_config.json's eos_token_id)")
    if details.get("stop_string"):
        print(
            f"the chat template ends a turn with {details['stop_string']!r}, several tokens of this tokenizer: "
            "pass it as a stop string with requests"
        )
    if exported.kind == "adapter" and details.get("end_of_turn"):
        print(
            f"the chat template ends a turn with token id {details['end_of_turn'][0]}: pass it in stop_token_ids "
            "unless the base model's generation_config.json lists it"
        )


def cmd_compare(args: argparse.Namespace) -> None:
    """Run every variant of a comparison recipe, or any one recipe, over several seeds and print one table of the
    task's metrics (mean ± standard deviation over seeds).

    Overrides apply to the comparison's base recipe (or to the recipe), e.g. `trainer.max_epochs=5`.
    """
    from distill.cli.report import print_comparison
    from distill.engine.compare import load_comparison, run_comparison, summary_rows

    plan = load_comparison(args.recipe, args.overrides)
    folder, results = run_comparison(plan, seeds=args.seeds)
    print_comparison(f"{plan.path.stem}: {plan.description}", results, summary_rows(plan.variants), folder)


def cmd_recipes(args: argparse.Namespace) -> None:
    """List the bundled recipes with their one-line descriptions."""
    from distill.config.load import bundled_recipes, read_yaml

    for name, path in bundled_recipes().items():
        print(f"{name:32s} {read_yaml(path).get('description', '')}")


def cmd_losses(args: argparse.Namespace) -> None:
    """List the loss terms a recipe can use under `loss.terms`, with their arguments and defaults."""
    from distill.tasks import TASKS
    from distill.tasks.feature_terms import reads_features
    from distill.tasks.loss_terms import LOSSES

    for name, cls in LOSSES.items():
        summary = (inspect.getdoc(cls) or "").splitlines()[0]
        params = [
            f"{p.name}={p.default!r}" for p in inspect.signature(cls).parameters.values() if p.default is not p.empty
        ]
        kind = cls.consumes.kind
        tasks = [t for t, spec in TASKS.items() if kind in spec.accepts or spec.objective == name]
        print(f"{name:12s} {cls.__module__}.{cls.__name__}({', '.join(params)})")
        print(f"{'':12s} {summary}\n{'':12s} consumes {kind}; tasks: {', '.join(tasks)}")
        if reads_features(cls):
            print(f"{'':12s} reads the layers named by `student:` and `teacher:` (a layer or a list, paired in order)")


def cmd_tasks(args: argparse.Namespace) -> None:
    """List the tasks a recipe can name under `task`, with what each trains on, the frozen models it reads and its own
    recipe section."""
    from distill.tasks import TASKS

    for name, spec in TASKS.items():
        frozen = ", ".join(f"{role}{'' if r.required else ' (optional)'}: {r.what}" for role, r in spec.frozen.items())
        kinds = ", ".join(sorted(spec.accepts))
        trains = f"objective {spec.objective}" if spec.objective else f"CE + terms of kinds {kinds}"
        print(f"{name:14s} {spec.description}\n{'':14s} {trains}; {frozen}")
        if spec.settings_key is not None:
            keys = ", ".join(f.name for f in dataclasses.fields(spec.settings))
            print(f"{'':14s} its section `{spec.settings_key}:` ({keys}): `distill keys {spec.settings_key}`")


def cmd_keys(args: argparse.Namespace) -> None:
    """List every recipe key, or those under SECTION (e.g. `optimizer`, `teacher.train`, a task's section), with its
    type, default and what it does."""
    from distill.config.keys import keys_of

    for doc in keys_of(args.section):
        default = f" = {doc.shown_default}" if doc.shown_default else ""
        print(f"{doc.key}: {doc.type}{default}")
        if doc.help:
            print(f"    {doc.help}")
