"""Where language-model text comes from: a corpus that ships with Python itself, or the user's files.

`python_stdlib_corpus` needs no download: the docstrings of the standard library's pure-Python modules are a few
megabytes of real, mostly English prose. `read_source` reads a recipe's `data.source` (that corpus, a `.txt` or
`.jsonl` file, a folder of them, or a Hugging Face `datasets` source) into plain-text documents or prompt/response
pairs.
"""

from __future__ import annotations

import ast
import functools
import gc
import json
import os
import re
import sysconfig
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.data.conversation import Conversation, Message, parse_conversation
from distill.data.tables import is_table_source, read_table
from distill.errors import DistillError

PYTHON_STDLIB = "python_stdlib"
PYTHON_STDLIB_CHAT = "python_stdlib_chat"  # the same docstrings as conversations (`stdlib_conversations`)
CHAT_SYSTEM = "You write the documentation of Python's standard library."
MIN_DOCSTRING_CHARS = 200
# Folders of the standard library that hold tests, tools, vendored or generated code rather than library docs.
SKIPPED_DIRS = frozenset(
    {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "turtledemo", "__pycache__"}
)
SOURCE_SUFFIXES = (".txt", ".jsonl")
SOURCE_FORMS = (
    f"'{PYTHON_STDLIB}', '{PYTHON_STDLIB_CHAT}', a .txt file, a .jsonl file, a folder of .txt/.jsonl files, "
    "'hf:<dataset>' (the Hugging Face Hub), a folder written by save_to_disk, or .parquet files"
)
# the column sets a text source may have, in order of preference
TEXT_COLUMNS = (("messages",), ("prompt", "response"), ("text",))


@dataclass(frozen=True)
class Pair:
    """A prompt/response example: only the response is trained on (and distilled)."""

    prompt: str
    response: str


Documents = list[str] | list[Pair] | list[Conversation]


@functools.lru_cache(maxsize=1)
def _stdlib_docstrings() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        # Prune in place: os.walk then never enters skipped folders (site-packages can be huge).
        subfolders[:] = [d for d in subfolders if d not in SKIPPED_DIRS and not d.startswith("config-")]
        files.extend(Path(folder, name) for name in names if name.endswith(".py"))
    files.sort()
    documents: list[str] = []
    collecting = gc.isenabled()
    gc.disable()  # parsing makes millions of AST nodes; collections mid-way would cost more than the parsing
    try:
        for path in files:
            documents.extend(_docstrings(path))
    finally:
        if collecting:
            gc.enable()
    if not documents:
        raise DistillError(f"found no docstrings in the Python standard library at {root} (is it installed as .py?)")
    return tuple(documents)


def _docstrings(path: Path) -> list[str]:
    """The module, class and function docstrings of one file, in source order, longer than MIN_DOCSTRING_CHARS."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))  # bytes: the file's coding cookie is honoured
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return []  # e.g. deliberately broken files; never fatal
    found: list[str] = []
    definitions = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, *definitions)):
            docstring = ast.get_docstring(node, clean=True)  # inspect.cleandoc
            if docstring is not None and len(docstring.strip()) > MIN_DOCSTRING_CHARS:
                found.append(docstring.strip())
        # Definitions sit in statement bodies only (also those of if/try/with/for...): expressions are skipped.
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, None) or ():
                if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                    visit(child)

    visit(tree)
    return found


def python_stdlib_corpus(max_chars: int | None = None) -> list[str]:
    """The docstrings of the standard library's pure-Python modules, as documents, in a fixed order.

    Read with `ast` from the source files (nothing is imported), sorted by path, skipping tests and tools; only
    docstrings longer than 200 characters, cleaned with `inspect.cleandoc`. With `max_chars`, the leading documents
    whose total length stays within it (at least one). The same Python version always gives the same list.
    """
    documents = _stdlib_docstrings()
    if max_chars is None:
        return list(documents)
    chosen, total = [], 0
    for document in documents:
        if chosen and total + len(document) > max_chars:
            break
        chosen.append(document)
        total += len(document)
    return chosen


def stdlib_conversations(max_reply_chars: int = 200) -> list[Conversation]:
    """The standard library's docstrings as chats, offline: the user gives a docstring's first sentence, the
    assistant continues it (up to `max_reply_chars`, cut at a word). Docstrings without a sentence break are skipped."""
    chats = []
    for text in python_stdlib_corpus():
        match = re.match(r"(.{10,160}?[.:!?])\s+(\S.*)", text, flags=re.S)
        if match is None:
            continue
        reply = match.group(2)
        if len(reply) > max_reply_chars:
            reply = reply[:max_reply_chars].rsplit(None, 1)[0]
        turns = (("system", CHAT_SYSTEM), ("user", match.group(1)), ("assistant", reply))
        chats.append(Conversation(tuple(Message(role, content) for role, content in turns)))
    return chats


def read_source(
    source: str, split: str = "train", revision: str | None = None, columns: Mapping[str, str] | None = None
) -> Documents:
    """The documents of a `data.source`: plain texts, prompt/response pairs or conversations (a source holds one
    kind only). `split` and `revision` apply to `datasets` sources (`distill.data.tables`), `columns` to them and to
    JSONL files."""
    if source == PYTHON_STDLIB:
        return python_stdlib_corpus()
    if source == PYTHON_STDLIB_CHAT:
        return stdlib_conversations()
    if is_table_source(source):
        return _table_documents(source, split, revision, columns)
    path = Path(source).expanduser()
    if not path.exists():
        raise DistillError(f"data.source: no such file or folder '{source}' (use {SOURCE_FORMS})")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
        if not files:
            raise DistillError(f"data.source: folder '{source}' holds no .txt or .jsonl files")
    elif path.suffix in SOURCE_SUFFIXES:
        files = [path]
    else:
        raise DistillError(f"data.source: '{source}' is neither a .txt nor a .jsonl file (use {SOURCE_FORMS})")
    documents: list = []
    for file in files:
        for where, item in _read_txt(file) if file.suffix == ".txt" else _read_jsonl(file, columns):
            if documents and type(item) is not type(documents[0]):
                raise DistillError(
                    f"{where}: data.source mixes plain text, prompt/response records and conversations; use one "
                    "kind per source"
                )
            documents.append(item)
    if not documents:
        raise DistillError(f"data.source: '{source}' holds no text")
    return documents


def _table_documents(source: str, split: str, revision: str | None, columns: Mapping[str, str] | None) -> Documents:
    """Conversations, prompt/response pairs or texts from a `datasets` source (blank texts skipped)."""
    records = read_table(source, TEXT_COLUMNS, columns, split, revision)
    documents: list = []
    for number, record in enumerate(records):
        if "messages" in record:
            documents.append(parse_conversation(record["messages"], f"data.source '{source}' ({split}) row {number}"))
            continue
        bad = [name for name, value in record.items() if not isinstance(value, str)]
        if bad:
            raise DistillError(
                f"data.source '{source}' ({split}) row {number}: column {bad[0]} is "
                f"{type(record[bad[0]]).__name__}, not text"
            )
        if "text" in record:
            if record["text"].strip():
                documents.append(record["text"])
        else:
            documents.append(Pair(record["prompt"], record["response"]))
    if not documents:
        raise DistillError(f"data.source '{source}' ({split}) holds no text")
    return documents


def _read_txt(file: Path) -> list[tuple[str, str]]:
    """One document per block of lines separated by blank lines."""
    text = _read_text(file)
    blocks = (block.strip() for block in re.split(r"\n[ \t\r\f\v]*\n", text))
    return [(f"{file}", block) for block in blocks if block]


def json_lines(
    file: Path, where: Callable[[int], str] | None = None, columns: Mapping[str, str] | None = None
) -> Iterator[tuple[str, Any]]:
    """`(where, value)` for each non-blank line of a JSONL file, `where` naming the line (default `file:number`);
    a line that is not JSON is a one-line error naming it. `columns` maps a name the reader reads to the file's key
    (`{"messages": "conversation"}`), as `data.columns` does for `datasets` sources."""
    for number, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        place = where(number) if where is not None else f"{file}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DistillError(f"{place}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        yield place, renamed(value, columns) if columns and isinstance(value, dict) else value


def renamed(record: dict[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """`record` with each key named in `columns` (a read name -> the record's key) under the name read."""
    out = dict(record)
    for name, key in columns.items():
        if key in record and key != name:
            out[name] = out.pop(key)
    return out


def _read_jsonl(file: Path, columns: Mapping[str, str] | None = None) -> list[tuple[str, str | Pair | Conversation]]:
    """`{"text": ...}`, `{"prompt": ..., "response": ...}` or `{"messages": [...]}` per line (keys renamed by
    `columns`); blank lines skipped."""
    records: list[tuple[str, str | Pair | Conversation]] = []
    for where, record in json_lines(file, columns=columns):
        if isinstance(record, dict) and "messages" in record:
            records.append((where, parse_conversation(record["messages"], where)))
        elif isinstance(record, dict) and isinstance(record.get("text"), str):
            if record["text"].strip():
                records.append((where, record["text"]))
        elif (
            isinstance(record, dict)
            and isinstance(record.get("prompt"), str)
            and isinstance(record.get("response"), str)
        ):
            records.append((where, Pair(record["prompt"], record["response"])))
        else:
            shown = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
            mapped = f" (after data.columns {dict(columns)})" if columns else " (map other keys with data.columns)"
            raise DistillError(
                f'{where}: expected {{"text": str}}, {{"prompt": str, "response": str}} or {{"messages": [...]}}, '
                f"got {shown}{mapped}"
            )
    return records


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DistillError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DistillError(f"{file}: cannot read ({exc.strerror})") from None
