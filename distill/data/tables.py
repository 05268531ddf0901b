"""Records from Hugging Face `datasets` sources: a Hub dataset (`hf:<name>`, with a revision and a split), a folder
written by `save_to_disk`, or parquet files. Columns are renamed to the names a data module reads (`text`,
`prompt`, `response`, `messages`, `chosen`, `rejected`, `image`) by the recipe's `data.columns`.

The `datasets` library is imported only when such a source is used (`pip install datasets`, part of the `llm`
extra). Local JSONL and text files are read by the modules' own readers, without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distill.data.hub import hub_offline, hub_reachable
from distill.data.tokenizers import _first_line
from distill.errors import DistillError

HUB_PREFIX = "hf:"
LOCAL_FORMS = "a folder written by Dataset.save_to_disk, a .parquet file or a folder of them, or a .jsonl file"


def is_table_source(source: str) -> bool:
    """Whether `source` is read through `datasets`: a Hub name, a saved dataset folder, or parquet files."""
    if source.startswith(HUB_PREFIX):
        return True
    path = Path(source).expanduser()
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and (is_saved_dataset(path) or any(path.glob("*.parquet")))


def check_source(source: str, forms: str, special: tuple[str, ...] = ("python_stdlib",), **settings: Any) -> None:
    """A `data.source` that exists (a Hub name is checked when read), and the `datasets` settings given in
    `settings` (`val_split`, `revision`, `columns`...) only beside a `datasets` source (`columns` beside JSONL files
    too); `forms` lists the valid sources, `special` the names that are not paths."""
    if source in special or source.startswith(HUB_PREFIX):
        pass
    elif not Path(source).expanduser().exists():
        raise DistillError(f"data.source: no such file or folder '{source}' (use {forms})")
    given = [name for name, value in settings.items() if value and not (name == "columns" and is_jsonl_source(source))]
    if given and not is_table_source(source):
        raise DistillError(
            f"data.{given[0]} applies to Hugging Face datasets sources ('hf:<name>', a save_to_disk folder, parquet "
            f"files){' and JSONL files' if given[0] == 'columns' else ''}; data.source '{source}' is not one"
        )


def is_jsonl_source(source: str) -> bool:
    """A .jsonl file, or a folder holding .jsonl files (whose keys `data.columns` may rename)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.suffix == ".jsonl"
    return path.is_dir() and any(path.rglob("*.jsonl"))


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def read_table(
    source: str,
    wanted: Sequence[Sequence[str]],
    columns: Mapping[str, str] | None = None,
    split: str = "train",
    revision: str | None = None,
) -> list[dict[str, Any]]:
    """The records of a `datasets` source, each a dict holding one of the `wanted` column sets under its canonical
    names (e.g. `[("messages",), ("prompt", "response"), ("text",)]`: the first set the dataset has is read).

    `columns` maps a canonical name to the dataset's column (`{"prompt": "question"}`); the others keep their own.
    A Hub name offline, a missing split or a missing column is a one-line error.
    """
    table = _load(source, split, revision)
    renamed = dict(columns or {})
    available = list(table.column_names)
    for names in wanted:
        actual = [renamed.get(name, name) for name in names]
        if all(column in available for column in actual):
            table = _images_undecoded(table.select_columns(actual))
            return [{name: row[column] for name, column in zip(names, actual, strict=True)} for row in table]
    asked = " or ".join("+".join(renamed.get(name, name) for name in names) for names in wanted)
    raise DistillError(
        f"data.source '{source}' ({split}): no column {asked}; it has {available} (map names with data.columns, "
        f"e.g. data.columns.{wanted[0][0]}=<column>)"
    )


def _images_undecoded(table: Any) -> Any:
    """Image columns as `{"bytes", "path"}` (the file's encoded bytes, or its path): decoded when a row is read,
    not all at once."""
    from datasets import Image

    for column, feature in table.features.items():
        if isinstance(feature, Image) and feature.decode:
            table = table.cast_column(column, Image(decode=False))
    return table


def _load(source: str, split: str, revision: str | None) -> Any:
    try:
        import datasets
    except ImportError:
        raise DistillError(
            f"data.source '{source}' is read with the `datasets` library: pip install datasets (or distill[llm])"
        ) from None
    datasets.disable_progress_bars()
    if source.startswith(HUB_PREFIX):
        return _hub(datasets, source[len(HUB_PREFIX) :], split, revision)
    path = Path(source).expanduser()
    if is_saved_dataset(path):
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as exc:  # its JSON or Arrow files unreadable or missing
            raise DistillError(
                f"data.source: '{source}' is not a readable save_to_disk folder ({_first_line(exc)})"
            ) from None
        return _pick_split(loaded, source, split)
    files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob("*.parquet"))
    check_parquet(files)
    return datasets.load_dataset("parquet", data_files=files, split="train")


def check_parquet(files: Sequence[str]) -> None:
    """Each file a parquet file (its footer is read): a text file named .parquet is one line, not pyarrow's
    traceback from inside `datasets`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        try:
            pq.ParquetFile(file).close()
        except (pa.ArrowException, OSError) as exc:
            raise DistillError(f"data.source: {file} is not a parquet file ({_first_line(exc)})") from None


def _pick_split(loaded: Any, source: str, split: str) -> Any:
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        return loaded  # one Dataset: the split was chosen when it was saved
    if split not in loaded:
        raise DistillError(
            f"data.source '{source}' has no split '{split}' (it has {sorted(loaded)}); choose data.split/val_split"
        )
    return loaded[split]


def _hub(datasets: Any, name: str, split: str, revision: str | None) -> Any:
    """A Hub dataset; when the Hub cannot be reached (or HF_HUB_OFFLINE is set) the libraries are put in offline
    mode first, so that a dataset in the local cache still loads and a missing one fails at once, not after the
    download retries."""
    offline = hub_offline("HF_DATASETS_OFFLINE") or not hub_reachable()
    try:
        with _offline_mode(datasets, offline):
            return datasets.load_dataset(name, split=split, revision=revision)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DistillError(f"data.source 'hf:{name}' has no split '{split}': {_first_line(exc)}") from None
        raise DistillError(f"data.source 'hf:{name}': {_first_line(exc)}") from None
    except Exception as exc:  # connection, hub and file errors
        where = "cannot be reached from here (offline)" if offline else f"failed ({_first_line(exc)})"
        raise DistillError(
            f"data.source 'hf:{name}': the Hugging Face Hub {where} and the dataset is not in the local cache; "
            f"where there is network, save it with load_dataset(...).save_to_disk(folder), then use {LOCAL_FORMS}"
        ) from None


@contextmanager
def _offline_mode(datasets: Any, offline: bool) -> Iterator[None]:
    """The Hub libraries in offline mode (they read the environment once, at import) for the duration."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
