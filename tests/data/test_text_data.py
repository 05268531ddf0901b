"""The causal language-model data: the bundled corpus, sources, rows, masks, splits and loaders."""

import inspect
import json
import re
import typing
from pathlib import Path

import pytest
import torch

from distill.data import DATASETS, CausalLMDataModule, create_datamodule
from distill.data import corpus as corpus_module
from distill.data.corpus import Pair, python_stdlib_corpus, read_source
from distill.data.text import IGNORE
from distill.errors import DistillError
from tests.data.test_data_registry import ALLOWED_TYPES

BYTES_PAD, BYTES_BOS, BYTES_EOS = 256, 257, 258


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def data(**kwargs) -> CausalLMDataModule:
    datamodule = create_datamodule("text", **kwargs)
    datamodule.setup("fit")
    return datamodule


def row_text(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> str:
    return tokenizer.decode(ids[mask.bool()].tolist())


# The corpus ---------------------------------------------------------------------------------------------------------


def test_stdlib_corpus_is_real_and_deterministic():
    documents = python_stdlib_corpus()
    assert len(documents) > 1000
    assert sum(map(len, documents)) > 100_000
    assert all(len(d) > 200 and d == d.strip() for d in documents)
    assert any(d.startswith("Object for wrapping/filling text.") for d in documents)  # textwrap.TextWrapper
    corpus_module._stdlib_docstrings.cache_clear()  # read the files again: the same documents, in the same order
    assert python_stdlib_corpus() == documents
    prefix = python_stdlib_corpus(max_chars=20_000)
    assert prefix == documents[: len(prefix)] and sum(map(len, prefix)) <= 20_000


def test_stdlib_corpus_reads_docstrings_without_importing(tmp_path, monkeypatch):
    source = (
        '''"""Module docstring that is long enough. '''
        + "x " * 120
        + '''"""
import this_module_does_not_exist

class A:
    """Short."""

    def f(self):
        """
            Indented docstring, cleaned like inspect.cleandoc does. '''
        + "y " * 120
        + '''
        """
'''
    )
    (tmp_path / "lib.py").write_text(source)
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_lib.py").write_text('"""' + "z " * 200 + '"""\n')
    monkeypatch.setattr(corpus_module.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    corpus_module._stdlib_docstrings.cache_clear()
    try:
        documents = python_stdlib_corpus()
    finally:
        corpus_module._stdlib_docstrings.cache_clear()
    assert len(documents) == 2  # the short docstring, the broken file and the test folder are skipped
    assert documents[0].startswith("Module docstring")
    assert documents[1].startswith("Indented docstring, cleaned")


# Sources ------------------------------------------------------------------------------------------------------------


def test_txt_blocks_and_jsonl_records_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first block\nstill first\n\n  \nsecond block\n\n\n")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "from jsonl"}, "", {"text": "again", "meta": 1}])
    assert read_source(str(tmp_path / "a.txt")) == ["first block\nstill first", "second block"]
    assert read_source(str(tmp_path)) == ["first block\nstill first", "second block", "from jsonl", "again"]
    pairs = write_jsonl(tmp_path / "pairs" / "p.jsonl", []) if (tmp_path / "pairs").mkdir() is None else None
    write_jsonl(pairs, [{"prompt": "Q?", "response": "A."}])
    assert read_source(str(pairs)) == [Pair("Q?", "A.")]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', "{not json}"], ":2: not valid JSON"),
        (['{"text": "ok"}', '{"text": "ok"}', '{"prompt": "no response"}'], ':3: expected {"text": str}'),
        (['{"text": "ok"}', "[1, 2]"], ":2: expected"),
        (['{"text": "ok"}', '{"prompt": "p", "response": "r"}'], ":2: data.source mixes plain text"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DistillError, match=re.escape(f"{path}{message}")) as error:
        read_source(str(path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "/no/such/corpus.txt"}, "data.source: no such file or folder '/no/such/corpus.txt'"),
        ({"seq_len": 4}, "data.seq_len must be >= 8, got 4"),
        ({"batch_size": 0}, "data.batch_size must be >= 1, got 0"),
        ({"val_fraction": 1.0}, "data.val_fraction must be in (0, 1), got 1.0"),
        ({"max_documents": 1}, "data.max_documents must be >= 2, got 1"),
        ({"teacher_seq_len": 64}, "data.teacher_seq_len is set but data.teacher_tokenizer is not"),
        ({"teacher_tokenizer": "bytes", "teacher_seq_len": 2}, "data.teacher_seq_len must be >= 8, got 2"),
        ({"tokenizer": "sentencepiece"}, "unknown tokenizer 'sentencepiece'"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        create_datamodule("text", **kwargs)


def test_bad_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "doc.md").write_text("text")
    (tmp_path / "one.txt").write_text("a single document")
    (tmp_path / "nothing").mkdir()
    cases = {
        "empty.txt": "holds no text",
        "doc.md": "is neither a .txt nor a .jsonl file",
        "nothing": "holds no .txt or .jsonl files",
        "one.txt": "has 1 document; need >= 2",
    }
    for name, message in cases.items():
        with pytest.raises(DistillError, match=re.escape(message)):
            data(source=str(tmp_path / name))


# The module's contract ----------------------------------------------------------------------------------------------


def test_registered_with_a_typed_defaulted_documented_constructor():
    assert DATASETS.get("text") is CausalLMDataModule
    hints = typing.get_type_hints(CausalLMDataModule.__init__)
    parameters = list(inspect.signature(CausalLMDataModule.__init__).parameters.values())[1:]
    documented = dict(re.findall(r"^    (\w+): (.+)$", inspect.getdoc(CausalLMDataModule).split("Args:")[1], re.M))
    for parameter in parameters:
        assert parameter.kind is parameter.KEYWORD_ONLY, parameter.name
        assert parameter.default is not parameter.empty, parameter.name
        assert hints[parameter.name] in ALLOWED_TYPES, (parameter.name, hints[parameter.name])
        assert parameter.name in documented, parameter.name


def test_sizes_are_known_before_the_corpus_is_read():
    datamodule = create_datamodule("text", teacher_tokenizer="bytes")
    assert datamodule._documents is None  # bytes needs no corpus
    assert (datamodule.vocab_size, datamodule.teacher_vocab_size, datamodule.pad_id) == (259, 259, BYTES_PAD)
    assert datamodule.model_args("student") == {"vocab_size": 259}
    assert datamodule.model_args("teacher") == {"vocab_size": 259}
    with pytest.raises(ValueError, match="role"):
        datamodule.model_args("critic")


def test_bpe_sizes_come_from_the_training_split(tmp_path):
    datamodule = create_datamodule(
        "text", tokenizer="bytes", teacher_tokenizer="bpe:300", max_documents=60, tokenizer_cache=str(tmp_path)
    )
    assert datamodule.model_args("teacher") == {"vocab_size": 300}
    assert datamodule.teacher_pad_id == 0
    assert len(list(tmp_path.glob("bpe-300-*.json"))) == 1


# Rows ---------------------------------------------------------------------------------------------------------------


def test_packing_fills_rows_with_the_documents_joined_by_eos():
    datamodule = data(max_documents=30, seq_len=64)
    rows = datamodule.train_set.tensors
    ids, mask, labels = rows["input_ids"].long(), rows["attention_mask"].long(), rows["labels"].long()
    assert ids.shape[1] == 64 and len(ids) > 10
    assert mask[:-1].all() and torch.equal(labels[:-1], ids[:-1])  # every row but the last is full
    stream = ids[mask.bool()].tolist()
    expected = [t for d in datamodule.documents[0] for t in [*d.encode("utf-8"), BYTES_EOS]]
    assert stream == expected
    last = mask[-1].bool()
    assert (labels[-1][~last] == IGNORE).all() and (ids[-1][~last] == BYTES_PAD).all()
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert all(batch[k].dtype == torch.long and batch[k].shape == (16, 64) for k in ("input_ids", "labels"))
    assert batch["index"].shape == (16,) and len(set(batch["index"].tolist())) == 16  # the rows' own indices


def test_unpacked_rows_are_one_document_each_padded_and_masked(tmp_path):
    long = "long document " * 10
    (tmp_path / "docs.txt").write_text(f"short one\n\n{long}\n\nmiddle\n\nanother\n\nlast")
    datamodule = data(source=str(tmp_path / "docs.txt"), packing=False, seq_len=16, val_fraction=0.2)
    everything = [datamodule.train_set[i] for i in range(len(datamodule.train_set))] + [
        datamodule.val_set[i] for i in range(len(datamodule.val_set))
    ]
    by_text = {row_text(datamodule.tokenizer, r["input_ids"], r["attention_mask"]): r for r in everything}
    short = by_text["short one"]
    assert short["input_ids"].tolist() == [BYTES_BOS, *b"short one", BYTES_EOS] + [BYTES_PAD] * 5
    assert short["attention_mask"].tolist() == [1] * 11 + [0] * 5
    assert short["labels"].tolist() == [BYTES_BOS, *b"short one", BYTES_EOS] + [IGNORE] * 5
    cut = by_text[long[:15]]  # truncated: bos + 15 bytes, no eos
    assert cut["attention_mask"].all() and torch.equal(cut["labels"], cut["input_ids"])


def test_prompt_tokens_are_masked_and_only_the_response_is_trained(tmp_path):
    records = [
        {"prompt": "ab", "response": "cd"},
        {"prompt": "long prompt that does not fit", "response": "lost"},
        {"prompt": "xy", "response": "a long response"},
        {"prompt": "p", "response": "q"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    with pytest.warns(UserWarning) as warned:
        datamodule = data(source=str(path), seq_len=8, val_fraction=0.25, split_seed=0)
    assert sorted(str(w.message) for w in warned) == [
        "data (train): of 3 prompt/response pairs, 1 dropped: no response token left within the row",
        "data (val): of 1 prompt/response pairs, 1 cut at data.seq_len=8 (0 in a prompt, 1 inside a response)",
    ]
    rows = [datamodule.train_set[i] for i in range(len(datamodule.train_set))]
    rows += [datamodule.val_set[i] for i in range(len(datamodule.val_set))]
    by_start = {bytes(r["input_ids"][1:3].tolist()): r for r in rows}
    assert set(by_start) == {b"ab", b"xy", b"pq"}  # the pair whose prompt fills the row is dropped, and counted
    assert sum(datamodule.dropped_rows.values()) == 1
    ab = by_start[b"ab"]
    assert ab["input_ids"].tolist() == [BYTES_BOS, *b"abcd", BYTES_EOS, BYTES_PAD, BYTES_PAD]
    assert ab["labels"].tolist() == [IGNORE, IGNORE, IGNORE, *b"cd", BYTES_EOS, IGNORE, IGNORE]
    assert ab["attention_mask"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    xy = by_start[b"xy"]  # response cut at seq_len: no eos
    assert xy["input_ids"].tolist() == [BYTES_BOS, *b"xya lon"]
    assert xy["labels"].tolist() == [IGNORE, IGNORE, IGNORE, *b"a lon"]


def test_documents_are_split_before_tokenization_deterministically():
    first, again, other = (create_datamodule("text", max_documents=40, split_seed=s).documents for s in (0, 0, 1))
    train, val = first
    assert first == again and first != other
    assert len(val) == 4 and len(train) == 36
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(python_stdlib_corpus()[:40])
    datamodule = data(max_documents=40, seq_len=32)
    val_text = "".join(row_text(datamodule.tokenizer, r["input_ids"], r["attention_mask"]) for r in datamodule.val_set)
    assert val_text == "".join(val) and datamodule.test_set is datamodule.val_set


# A teacher with its own tokenizer -----------------------------------------------------------------------------------


def check_aligned(datamodule: CausalLMDataModule, dataset) -> int:
    """Every row's student and teacher tokens decode to the same text (the teacher's may be cut when its row is full).

    Returns the number of rows.
    """
    for i in range(len(dataset)):
        row = dataset[i]
        student = row_text(datamodule.tokenizer, row["input_ids"], row["attention_mask"])
        teacher = row_text(datamodule.teacher_tokenizer, row["teacher_input_ids"], row["teacher_attention_mask"])
        if row["teacher_attention_mask"].all():
            assert student.startswith(teacher), i
        else:
            assert student == teacher, i
        for prefix in ("", "teacher_"):
            padding = row[f"{prefix}attention_mask"] == 0
            assert (row[f"{prefix}labels"][padding] == IGNORE).all()
            assert (row[f"{prefix}input_ids"][padding] == getattr(datamodule, f"{prefix}pad_id")).all()
    return len(dataset)


def test_teacher_tokenizer_rows_hold_the_same_text_packed(tmp_path):
    datamodule = data(
        max_documents=40, seq_len=48, tokenizer="bytes", teacher_tokenizer="bpe:300", tokenizer_cache=str(tmp_path)
    )
    assert check_aligned(datamodule, datamodule.train_set) > 20 and check_aligned(datamodule, datamodule.val_set)
    rows = datamodule.train_set.tensors
    assert rows["input_ids"].shape[1] == 48 and rows["attention_mask"].sum(1).float().mean() > 0.85 * 48
    assert rows["teacher_input_ids"].shape[1] == datamodule.teacher_seq_len < 48  # BPE needs fewer tokens
    assert sum(datamodule.teacher_truncated_rows.values()) == 0
    # The rows cover the training documents, joined by eos on both sides.
    student_stream = rows["input_ids"][rows["attention_mask"]].tolist()
    assert student_stream == [t for d in datamodule.documents[0] for t in [*d.encode("utf-8"), BYTES_EOS]]
    teacher_eos = (rows["teacher_input_ids"] == datamodule.teacher_tokenizer.eos_id).sum().item()
    assert teacher_eos == len(datamodule.documents[0])
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["teacher_input_ids"].shape == (16, datamodule.teacher_seq_len)


def test_teacher_tokenizer_rows_hold_the_same_text_for_pairs(tmp_path):
    records = [
        {"prompt": f"Question {i}: what is {i} + {i}? ", "response": f"It is {2 * i}. " * (i % 5)} for i in range(30)
    ]
    source = str(write_jsonl(tmp_path / "qa.jsonl", records))
    common = {"source": source, "seq_len": 32, "tokenizer": "bpe:300", "tokenizer_cache": str(tmp_path)}
    datamodule = data(**common, teacher_tokenizer="bytes")
    rows = [datamodule.train_set[i] for i in range(len(datamodule.train_set))]
    rows += [datamodule.val_set[i] for i in range(len(datamodule.val_set))]
    assert check_aligned(datamodule, datamodule.train_set) + check_aligned(datamodule, datamodule.val_set) == 30
    assert sum(datamodule.teacher_truncated_rows.values()) == 0  # teacher_seq_len=None: the longest teacher row
    assert datamodule.teacher_seq_len == max(int(r["teacher_attention_mask"].sum()) for r in rows)
    for row in rows:  # the prompt is masked on both sides, and the same text
        prompt = row_text(
            datamodule.tokenizer, row["input_ids"], row["attention_mask"].bool() & (row["labels"] == IGNORE)
        )
        teacher_prompt = row_text(
            datamodule.teacher_tokenizer,
            row["teacher_input_ids"],
            row["teacher_attention_mask"].bool() & (row["teacher_labels"] == IGNORE),
        )
        assert prompt == teacher_prompt and prompt.startswith("Question ")
        response = row_text(datamodule.tokenizer, row["input_ids"], row["labels"] != IGNORE)
        expected = records[int(prompt.split()[1].rstrip(":"))]
        assert prompt == expected["prompt"] and expected["response"].startswith(response)
        if response == expected["response"]:  # not cut: the eos closes the response and is trained on
            assert datamodule.tokenizer.eos_id in row["labels"].tolist()
        else:
            assert row["attention_mask"].all()

    with pytest.warns(UserWarning, match=r"cut at data.teacher_seq_len=40 \(0 in a prompt, \d+ inside a response\) on"):
        cut = data(**common, teacher_tokenizer="bytes", teacher_seq_len=40)
    assert check_aligned(cut, cut.train_set) + check_aligned(cut, cut.val_set) == 30
    assert cut.train_set.tensors["teacher_input_ids"].shape[1] == 40
    assert sum(cut.teacher_truncated_rows.values()) > 0


# Loaders ------------------------------------------------------------------------------------------------------------


def epoch_orders(datamodule: CausalLMDataModule, epochs: int) -> list[torch.Tensor]:
    loader = datamodule.train_dataloader()
    return [torch.cat([batch["input_ids"][:, :4] for batch in loader]) for _ in range(epochs)]


def test_training_order_depends_only_on_seed_and_epoch():
    datamodule = data(max_documents=40, seq_len=32, batch_size=8)
    torch.manual_seed(1)
    first = epoch_orders(datamodule, 2)
    torch.manual_seed(2)  # the global RNG state before the loader does not matter
    again = epoch_orders(datamodule, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # a new order each epoch
    assert len(first[0]) == len(datamodule.train_set)  # drop_last=False
    datamodule.seed = 1
    assert not torch.equal(epoch_orders(datamodule, 1)[0], first[0])
    datamodule.seed = 0
    loader = datamodule.train_dataloader()
    loader.epoch_fn = lambda: 1  # as a resumed trainer reports it: epoch 1 again
    assert torch.equal(torch.cat([b["input_ids"][:, :4] for b in loader]), first[1])
    val = [torch.cat([b["input_ids"] for b in datamodule.val_dataloader()]) for _ in range(2)]
    assert torch.equal(val[0], val[1]) and torch.equal(val[0], datamodule.val_set.tensors["input_ids"].long())


def test_setup_is_idempotent():
    datamodule = data(max_documents=10, seq_len=32)
    train_set = datamodule.train_set
    datamodule.setup("validate")
    datamodule.setup("test")
    assert datamodule.train_set is train_set
