"""The preference data: pairs made from the bundled corpus or read from JSONL, masks, prompts, swap, splits, loaders."""

import json
import re
from pathlib import Path

import pytest
import torch

from distill.data import DATASETS, PreferenceDataModule, create_datamodule
from distill.data.corpus import python_stdlib_corpus
from distill.data.preference_pairs import PreferencePair, halve
from distill.data.text import IGNORE
from distill.errors import DistillError

PAD, BOS, EOS = 256, 257, 258  # the bytes tokenizer's specials
SIDES = ("chosen", "rejected")
RECORDS = [
    {"prompt": "ab", "chosen": "cd", "rejected": "xyz", "id": 0},  # other keys are ignored
    {"prompt": "prompt!", "chosen": "fills", "rejected": "row"},  # bos + 7 bytes fill seq_len=8: dropped
    {"prompt": "q", "chosen": "long answer", "rejected": "no"},  # chosen cut at seq_len: no eos
    {"prompt": "pqrs", "chosen": "t", "rejected": "u"},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def data(**kwargs) -> PreferenceDataModule:
    datamodule = create_datamodule("preference", **kwargs)
    datamodule.setup("fit")
    return datamodule


def splits(datamodule: PreferenceDataModule) -> tuple:
    return datamodule.train_set, datamodule.val_set, datamodule.test_set


def all_rows(datamodule: PreferenceDataModule) -> list[dict[str, torch.Tensor]]:
    return [dataset[i] for dataset in splits(datamodule) for i in range(len(dataset))]


def tiny(tmp_path: Path, **kwargs) -> PreferenceDataModule:
    path = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    with pytest.warns(UserWarning, match="dropped 1 pairs with no response token within data.seq_len"):
        return data(source=str(path), seq_len=8, val_fraction=0.25, **kwargs)


# The module's contract ----------------------------------------------------------------------------------------------


def test_registered_and_sized_before_the_corpus_is_read():
    """(The constructor's contract is checked for every registered dataset by test_data_registry.py.)"""
    assert DATASETS.get("preference") is PreferenceDataModule
    datamodule = create_datamodule("preference")
    assert datamodule._records is None  # sizes are known before the corpus is read
    assert (datamodule.vocab_size, datamodule.pad_id, datamodule.seed) == (259, PAD, 0)
    assert datamodule.model_args("student") == datamodule.model_args("teacher") == {"vocab_size": 259}
    with pytest.raises(ValueError, match="role"):
        datamodule.model_args("critic")


# Pairs from the corpus ----------------------------------------------------------------------------------------------


def test_corpus_pairs_are_real_continuations_and_their_words_shuffled_by_split_seed():
    first, again, other = (data(max_pairs=60, split_seed=s) for s in (0, 0, 1))
    assert first.pairs == again.pairs and first.pairs != other.pairs
    pairs = sum(first.pairs, [])
    documents = python_stdlib_corpus()[:60]
    assert len(pairs) + first.unpaired_documents == 60 and len(pairs) >= 55
    for pair in pairs:
        document = next(d for d in documents if d.startswith(pair.prompt + pair.chosen))
        assert len(pair.prompt) <= 64 and len(pair.chosen) <= 64 and document[len(pair.prompt)].isspace()
        assert pair.chosen != pair.rejected and len(pair.chosen) == len(pair.rejected)
        assert sorted(pair.chosen.split()) == sorted(pair.rejected.split())  # the same words,
        assert re.sub(r"\S+", "", pair.chosen) == re.sub(r"\S+", "", pair.rejected)  # the same whitespace
    # The same docstring gives the same pair whichever split it falls in.
    by_prompt = {p.prompt: p for p in sum(other.pairs, [])}
    assert any(by_prompt[p.prompt] == p for p in pairs) and any(by_prompt[p.prompt] != p for p in pairs)


def test_several_pairs_per_document_come_from_consecutive_stretches_in_one_split():
    one, several = data(max_pairs=60), data(max_pairs=60, pairs_per_document=3)
    for split_one, split_several in zip(one.pairs, several.pairs, strict=True):
        assert set(split_one) <= set(split_several)  # each docstring's first pair is the one it gives alone
    assert len(sum(several.pairs, [])) > 2 * len(sum(one.pairs, []))
    for document in python_stdlib_corpus()[:60]:
        mine = several._corpus_pairs(document)
        assert 1 <= len(mine) <= 3
        # In reading order, each stretch starts where the text after the previous chosen response does.
        position = 0
        for pair in mine:
            start = document.index(pair.prompt + pair.chosen, position)
            assert document[position:start].strip() == ""
            position = start + len(pair.prompt) + len(pair.chosen)
        assert len({i for i, split in enumerate(several.pairs) for p in mine if p in split}) == 1  # one split
    with pytest.raises(DistillError, match="data.pairs_per_document must be >= 1"):
        create_datamodule("preference", pairs_per_document=0)


def test_replace_corruption_changes_one_word_into_another_of_the_continuation():
    datamodule = data(max_pairs=60, corruption="replace")
    pairs = sum(datamodule.pairs, [])
    assert len(pairs) >= 55
    for pair in pairs:
        chosen, rejected = re.split(r"(\s+)", pair.chosen), re.split(r"(\s+)", pair.rejected)
        assert len(chosen) == len(rejected)  # the same layout of words and whitespace
        changed = [i for i, (a, b) in enumerate(zip(chosen, rejected, strict=True)) if a != b]
        assert len(changed) == 1 and rejected[changed[0]] in chosen[::2]  # one word, taken from the continuation
    plain = data(max_pairs=60)
    assert [p.chosen for p in sum(plain.pairs, [])] == [p.chosen for p in pairs]  # same prompts and continuations
    with pytest.raises(DistillError, match="data.corruption"):
        create_datamodule("preference", corruption="drop")


def test_rows_share_the_prompt_and_left_padded_prompts_end_with_it():
    datamodule = data(max_pairs=40, seq_len=96)
    tokenizer, pairs = datamodule.tokenizer, sum(datamodule.pairs, [])
    rows = all_rows(datamodule)
    assert len(rows) == len(pairs) and sum(datamodule.dropped_pairs.values()) == 0
    width = datamodule.prompt_width
    assert all(row["prompt_input_ids"].shape == (width,) for row in rows)
    for row, pair in zip(rows, pairs, strict=True):
        n = int(row["prompt_lengths"])
        assert torch.equal(row["chosen_input_ids"][:n], row["rejected_input_ids"][:n])
        assert (
            row["chosen_input_ids"][0] == BOS and tokenizer.decode(row["chosen_input_ids"][:n].tolist()) == pair.prompt
        )
        assert torch.equal(row["prompt_input_ids"][width - n :], row["chosen_input_ids"][:n])
        assert row["prompt_attention_mask"].tolist() == [0] * (width - n) + [1] * n
        assert (row["prompt_input_ids"][: width - n] == PAD).all()
        for side in SIDES:
            labels = row[f"{side}_labels"]
            assert (labels[:n] == IGNORE).all() and (labels[n] != IGNORE).item()  # the response starts at n
            response = tokenizer.decode(labels[labels != IGNORE].tolist())
            assert getattr(pair, side).startswith(response) and response  # cut by seq_len, maybe


def test_stdlib_split_and_bpe_are_those_of_the_text_module(tmp_path):
    """Pairs are split like the `text` module's documents, so a reference model trained on its training split saw
    none of the validation prompts, and `bpe:<V>` is the same tokenizer (one cached file)."""
    common = {"split_seed": 3, "tokenizer": "bpe:300", "tokenizer_cache": str(tmp_path)}
    preference = data(max_pairs=40, **common)
    text = create_datamodule("text", max_documents=40, **common)
    assert preference.records == text.documents
    assert text.tokenizer.path == preference.tokenizer.path and len(list(tmp_path.glob("*.json"))) == 1
    train, val, test = (set(p.prompt for p in part) for part in preference.pairs)
    assert train.isdisjoint(val | test) and val.isdisjoint(test) and len(val) == len(test) == 2
    for rows, pairs in zip((preference.val_set, preference.test_set), preference.pairs[1:], strict=True):
        prompts = [
            preference.tokenizer.decode(row["prompt_input_ids"][row["prompt_attention_mask"].bool()].tolist())
            for row in rows
        ]
        assert prompts == [p.prompt for p in pairs]  # val picks the best checkpoint, test reports it: no overlap


def test_halve_splits_held_out_pairs_disjointly_and_keeps_a_single_one_in_both():
    items = list(range(9))
    first, second = halve(items, seed=0)
    assert sorted(first + second) == items and len(first) == 5 and len(second) == 4  # disjoint
    assert first == sorted(first) and second == sorted(second)  # the items' order kept
    assert halve(items, seed=0) == (first, second) and halve(items, seed=1) != (first, second)
    assert halve(["only"], seed=0) == (["only"], ["only"]) and halve([], seed=0) == ([], [])


# Rows from JSONL ----------------------------------------------------------------------------------------------------


def test_labels_mask_the_prompt_and_the_padding_exactly(tmp_path):
    datamodule = tiny(tmp_path)
    assert datamodule.dropped_pairs == {"train": 1, "val": 0, "test": 0}
    assert datamodule.pairs[1] == datamodule.pairs[2]  # a single held-out pair is both val and test
    rows = {bytes(row["chosen_input_ids"][1:3].tolist()): row for row in all_rows(datamodule)}
    assert set(rows) == {b"ab", b"ql", b"pq"}
    assert datamodule.prompt_width == 5  # bos + "pqrs"
    ab = rows[b"ab"]
    assert ab["chosen_input_ids"].tolist() == [BOS, *b"abcd", EOS, PAD, PAD]
    assert ab["chosen_labels"].tolist() == [IGNORE] * 3 + [*b"cd", EOS, IGNORE, IGNORE]
    assert ab["chosen_attention_mask"].tolist() == [1] * 6 + [0] * 2
    assert ab["rejected_input_ids"].tolist() == [BOS, *b"abxyz", EOS, PAD]
    assert ab["rejected_labels"].tolist() == [IGNORE] * 3 + [*b"xyz", EOS, IGNORE]
    assert ab["rejected_attention_mask"].tolist() == [1] * 7 + [0]
    assert ab["prompt_input_ids"].tolist() == [PAD, PAD, BOS, *b"ab"]
    assert ab["prompt_attention_mask"].tolist() == [0, 0, 1, 1, 1] and ab["prompt_lengths"].item() == 3
    cut = rows[b"ql"]  # the chosen response is cut at seq_len (no eos); the rejected one fits
    assert cut["chosen_input_ids"].tolist() == [BOS, *b"qlong a"]
    assert cut["chosen_labels"].tolist() == [IGNORE] * 2 + [*b"long a"]
    assert cut["rejected_labels"].tolist() == [IGNORE] * 2 + [*b"no", EOS, IGNORE, IGNORE, IGNORE]
    assert cut["prompt_input_ids"].tolist() == [PAD, PAD, PAD, BOS, *b"q"] and cut["prompt_lengths"].item() == 2
    assert rows[b"pq"]["prompt_input_ids"].tolist() == [BOS, *b"pqrs"]
    batch = next(iter(datamodule.val_dataloader()))
    expected = {f"{s}_{k}" for s in SIDES for k in ("input_ids", "attention_mask", "labels")}
    assert set(batch) == expected | {"prompt_input_ids", "prompt_attention_mask", "prompt_lengths"}
    assert all(value.dtype == torch.long for value in batch.values())


def test_swap_exchanges_chosen_and_rejected_exactly(tmp_path):
    plain, swapped = tiny(tmp_path), tiny(tmp_path, swap=True)
    assert swapped.pairs == tuple([p.swapped() for p in part] for part in plain.pairs)
    for a, b in zip(splits(plain), splits(swapped), strict=True):
        for key, value in a.tensors.items():
            other = key.replace("chosen", "@").replace("rejected", "chosen").replace("@", "rejected")
            assert torch.equal(value, b.tensors[other]), key
    corpus, reverse = data(max_pairs=20), data(max_pairs=20, swap=True)
    assert torch.equal(corpus.train_set.tensors["chosen_labels"], reverse.train_set.tensors["rejected_labels"])
    assert torch.equal(corpus.val_set.tensors["rejected_input_ids"], reverse.val_set.tensors["chosen_input_ids"])


def test_a_folder_of_jsonl_files_is_read_in_path_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "2", "chosen": "c", "rejected": "r"}, ""])
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "1", "chosen": "c", "rejected": "r"}])
    write_jsonl(tmp_path / "sub" / "c.jsonl", [{"prompt": "3", "chosen": "c", "rejected": "r"}])
    (tmp_path / "notes.txt").write_text("ignored")
    datamodule = create_datamodule("preference", source=str(tmp_path), val_fraction=0.3)
    train, val = datamodule.records
    assert sorted(train + val, key=lambda p: p.prompt) == [PreferencePair(str(i), "c", "r") for i in (1, 2, 3)]


# Errors -------------------------------------------------------------------------------------------------------------


GOOD = '{"prompt": "p", "chosen": "c", "rejected": "r"}'


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([GOOD, "{not json}"], ":2: not valid JSON (Expecting property name"),
        (
            [GOOD, "", '{"prompt": "p", "chosen": "c"}'],
            ':3: expected {"prompt": str, "chosen": str, "rejected": str}; missing rejected',
        ),
        (
            [GOOD, '{"text": "plain"}'],
            ':2: expected {"prompt": str, "chosen": str, "rejected": str}; missing prompt, chosen, rejected',
        ),
        (
            ['{"prompt": "p", "chosen": ["c"], "rejected": "r"}'],  # a list is a chat: its turns are checked
            ":1 (chosen): message 0 has no text 'content'",
        ),
        (['["p", "c", "r"]'], ':1: expected {"prompt": str, "chosen": str, "rejected": str}, got list'),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DistillError, match=re.escape(f"{path}{message}")) as error:
        data(source=str(path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "/no/such/pairs.jsonl"}, "data.source: no such file or folder '/no/such/pairs.jsonl'"),
        ({"seq_len": 4}, "data.seq_len must be >= 8, got 4"),
        ({"prompt_chars": 0}, "data.prompt_chars must be >= 1, got 0"),
        ({"val_fraction": 0.0}, "data.val_fraction must be in (0, 1), got 0.0"),
        ({"max_pairs": 1}, "data.max_pairs must be >= 2, got 1"),
        ({"tokenizer": "words"}, "unknown tokenizer 'words'"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        create_datamodule("preference", **kwargs)


def test_bad_sources_and_empty_results_are_clear_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "pairs.txt").write_text("text")
    (tmp_path / "nothing").mkdir()
    write_jsonl(tmp_path / "one.jsonl", RECORDS[:1])
    cases = {
        "empty.jsonl": "holds no preference pairs",
        "pairs.txt": "is not a .jsonl file",
        "nothing": "holds no .jsonl files",
        "one.jsonl": "has 1 record; need >= 2 to split",
    }
    for name, message in cases.items():
        with pytest.raises(DistillError, match=re.escape(message)):
            data(source=str(tmp_path / name))
    write_jsonl(tmp_path / "long.jsonl", [{"prompt": "a long prompt", "chosen": "c", "rejected": "r"}] * 2)
    message = "data: the train split has no pairs (1 before dropping those whose prompt fills data.seq_len=8;"
    with pytest.raises(DistillError, match=re.escape(message)), pytest.warns(UserWarning, match="dropped 1 pairs"):
        data(source=str(tmp_path / "long.jsonl"), seq_len=8)


# Loaders ------------------------------------------------------------------------------------------------------------


def epoch_orders(datamodule: PreferenceDataModule, epochs: int) -> list[torch.Tensor]:
    loader = datamodule.train_dataloader()
    return [torch.cat([batch["chosen_input_ids"][:, :8] for batch in loader]) for _ in range(epochs)]


def test_training_order_depends_only_on_seed_and_epoch():
    datamodule = data(max_pairs=40, seq_len=32, prompt_chars=12, response_chars=12, batch_size=8)
    torch.manual_seed(1)
    first = epoch_orders(datamodule, 2)
    torch.manual_seed(2)  # the global RNG state before the loader does not matter
    again = epoch_orders(datamodule, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1]) and len(first[0]) == len(datamodule.train_set)
    datamodule.seed = 1
    assert not torch.equal(epoch_orders(datamodule, 1)[0], first[0])
    datamodule.seed = 0
    loader = datamodule.train_dataloader()
    loader.epoch_fn = lambda: 1  # as a resumed trainer reports it: epoch 1 again
    assert torch.equal(torch.cat([b["chosen_input_ids"][:, :8] for b in loader]), first[1])
    val = [torch.cat([b["rejected_input_ids"] for b in datamodule.val_dataloader()]) for _ in range(2)]
    assert torch.equal(val[0], val[1]) and torch.equal(val[0], datamodule.val_set.tensors["rejected_input_ids"].long())
    train_set = datamodule.train_set
    datamodule.setup("validate")
    datamodule.setup("test")
    assert datamodule.train_set is train_set  # setup is idempotent
