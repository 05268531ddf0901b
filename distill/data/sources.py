"""What a text data module reads and validates on: `data.source` and `data.validation`, checked together.

A source is a path or a special name (`python_stdlib`, `hf:<name>`, a file, a folder), or a mapping that binds a
Hugging Face `datasets` source to its splits and revision:

    source: {path: hf:HuggingFaceH4/ultrachat_200k, split: train_sft, val_split: test_sft}

The mapping is what recipes write, because one override of the source then replaces it with everything that belongs
to it: `data.source=chats.jsonl` leaves no split name behind that the file does not have (flat `split`, `val_split` and
`revision` keys are accepted too, for sources named by a path). Validation is, in order: `data.validation` (another
source of any form, e.g. a JSONL file), the source's `val_split`, or a held-out `data.val_fraction` of the source.
Every combination that cannot mean one thing is a one-line error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from distill.data.tables import HUB_PREFIX, check_source, is_jsonl_source, is_table_source
from distill.errors import DistillError, did_you_mean

SOURCE_KEYS = ("path", "split", "val_split", "revision")
VALIDATION_KEYS = ("path", "split", "revision")
SourceValue = str | dict[str, str | None]


@dataclass(frozen=True)
class Source:
    """One source to read: `path`, and for a `datasets` source the `split` and Hub `revision`."""

    path: str
    split: str = "train"
    revision: str | None = None

    def describe(self) -> str:
        return f"{self.path} ({self.split})" if is_table_source(self.path) else self.path


@dataclass(frozen=True)
class SourcePlan:
    """The training source and what validates: another source, or (None) a held-out fraction of the training one."""

    train: Source
    validation: Source | None


def plan_sources(
    source: SourceValue,
    validation: SourceValue | None,
    *,
    split: str | None,
    val_split: str | None,
    revision: str | None,
    columns: Mapping[str, str] | None,
    forms: str,
    special: tuple[str, ...],
) -> SourcePlan:
    """The sources of `data.source` and `data.validation` with the flat `data.split`, `data.val_split` and
    `data.revision`, checked: each exists, split names and revisions only for `datasets` sources, `columns` only
    for sources with columns, and at most one way to validate."""
    given = _fields(source, "data.source", SOURCE_KEYS)
    flat = {"split": split, "val_split": val_split, "revision": revision}
    for key, value in flat.items():
        if value is not None and key in given:
            raise DistillError(f"data.{key} and data.source.{key} are both set; keep one (data.source.{key})")
    named = {key: (f"data.source.{key}", given[key]) for key in given if key != "path"}
    named.update({key: (f"data.{key}", value) for key, value in flat.items() if value is not None})
    path = given["path"]
    check_source(path, forms, special)
    _only_for_tables(path, named)
    train = Source(path, named.get("split", ("", "train"))[1], named.get("revision", ("", None))[1])
    held_out = named.get("val_split")
    if validation is None:
        plan = SourcePlan(train, Source(path, held_out[1], train.revision) if held_out else None)
    else:
        if held_out:
            raise DistillError(
                f"data.validation and {held_out[0]} both say what to validate on; keep one (set {held_out[0]}=null "
                "or drop data.validation)"
            )
        plan = SourcePlan(train, _validation_source(validation, forms, special))
    _check_columns(plan, columns)
    return plan


def _fields(value: SourceValue, where: str, keys: tuple[str, ...]) -> dict[str, str]:
    """A source value as its fields: a string is the path; a mapping is checked key by key."""
    if isinstance(value, str):
        return {"path": value}
    if not isinstance(value, Mapping):
        raise DistillError(f"{where} must be a path or a mapping of {', '.join(keys)}, got {type(value).__name__}")
    for key, item in value.items():
        if key not in keys:
            raise DistillError(f"{where}: unknown key '{key}'{did_you_mean(str(key), keys)}")
        if item is not None and (not isinstance(item, str) or not item):
            raise DistillError(f"{where}.{key} must be a non-empty string or null, got {item!r}")
    given = {key: item for key, item in value.items() if item is not None}  # null: not given (an override's way out)
    if "path" not in given:
        raise DistillError(f"{where}.path is required: the file, folder or 'hf:<dataset>' to read")
    return given


def _only_for_tables(path: str, named: dict[str, tuple[str, str]]) -> None:
    """Split names and revisions belong to `datasets` sources; a file or folder has neither."""
    if named and not is_table_source(path):
        key, _ = next(iter(named.values()))
        raise DistillError(
            f"{key} names a split or revision of a Hugging Face datasets source ('hf:<name>', a save_to_disk folder, "
            f"parquet files); data.source '{path}' has none: validate on a file (data.validation=<file>) or a "
            "held-out fraction (data.val_fraction)"
        )


def _validation_source(value: SourceValue, forms: str, special: tuple[str, ...]) -> Source:
    given = _fields(value, "data.validation", VALIDATION_KEYS)
    path = given["path"]
    if path in special and not path.startswith(HUB_PREFIX):
        raise DistillError(f"data.validation: '{path}' is a training corpus, not a validation source; name a file")
    try:
        check_source(path, forms, special)
    except DistillError as exc:
        raise DistillError(str(exc).replace("data.source", "data.validation", 1)) from None
    named = {key: (f"data.validation.{key}", given[key]) for key in given if key != "path"}
    _only_for_tables(path, named)
    return Source(path, given.get("split", "train"), given.get("revision"))


def _check_columns(plan: SourcePlan, columns: Mapping[str, str] | None) -> None:
    """`data.columns` renames the columns of `datasets` sources and the keys of JSONL files: refused beside a
    source that has neither (plain text, the built-in corpora)."""
    if not columns:
        return
    for which, source in (("data.source", plan.train), ("data.validation", plan.validation)):
        if source is not None and not (is_table_source(source.path) or is_jsonl_source(source.path)):
            raise DistillError(
                f"data.columns applies to Hugging Face datasets sources and JSONL files; {which} '{source.path}' is "
                "neither"
            )
