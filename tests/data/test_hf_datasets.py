"""Hugging Face `datasets` sources for the text, preference and image-text data modules: a folder written by
`save_to_disk` (with its splits and renamed columns), parquet files, and a Hub name offline, each read the way a
user's recipe names it; the tests write their datasets themselves."""

from __future__ import annotations

import io

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from distill.data import create_datamodule
from distill.data.tables import read_table
from distill.data.tokenizers import ByteTokenizer
from distill.errors import DistillError
from tests.helpers_vlm import tiny_llava_processor

QUESTIONS = [f"question {i}?" for i in range(12)]
ANSWERS = [f"answer number {i}" + "!" * i for i in range(12)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def saved(tmp_path):
    """A DatasetDict with train/test splits whose columns are named otherwise than distill reads them."""
    train = Dataset.from_dict({"question": QUESTIONS[:10], "answer": ANSWERS[:10], "id": list(range(10))})
    test = Dataset.from_dict({"question": QUESTIONS[10:], "answer": ANSWERS[10:], "id": [10, 11]})
    folder = tmp_path / "qa"
    DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    return str(folder)


def responses(rows) -> list[str]:
    """The trained text of each row: its labels that are not -100, decoded (eos dropped)."""
    return [ByteTokenizer().decode([t for t in row.tolist() if t != -100]) for row in rows.tensors["labels"]]


def test_a_saved_dataset_with_splits_and_renamed_columns(saved):
    data = create_datamodule(
        "text",
        source=saved,
        columns={"prompt": "question", "response": "answer"},
        val_split="test",
        seq_len=64,
        batch_size=4,
    )
    data.setup()
    assert responses(data.train_set) == ANSWERS[:10]  # only the responses are trained on, every train row kept
    assert responses(data.val_set) == ANSWERS[10:]  # the dataset's own test split, not a held-out fraction
    first = data.train_set.tensors["input_ids"][0].tolist()
    assert ByteTokenizer().decode(first).startswith(QUESTIONS[0] + ANSWERS[0])


def test_parquet_texts_and_the_held_out_fraction(tmp_path):
    texts = [f"document {i}: " + "word " * (5 + i) for i in range(20)]
    folder = tmp_path / "parquet"
    folder.mkdir()
    Dataset.from_dict({"text": texts[:10]}).to_parquet(str(folder / "part-0.parquet"))
    Dataset.from_dict({"text": texts[10:]}).to_parquet(str(folder / "part-1.parquet"))
    data = create_datamodule("text", source=str(folder), val_fraction=0.25, seq_len=32, batch_size=4)
    train, val = data.documents
    assert sorted(train + val) == sorted(texts) and len(val) == 5


def test_preference_pairs_from_parquet_with_a_column_map(tmp_path):
    path = tmp_path / "prefs.parquet"
    Dataset.from_dict({"question": QUESTIONS, "good": ANSWERS, "bad": [a[::-1] for a in ANSWERS]}).to_parquet(str(path))
    data = create_datamodule(
        "preference",
        source=str(path),
        columns={"prompt": "question", "chosen": "good", "rejected": "bad"},
        seq_len=64,
        batch_size=2,
        val_fraction=0.25,
    )
    train, held_out = data.records
    assert len(train) == 9 and len(held_out) == 3
    assert all(pair.rejected == pair.chosen[::-1] for pair in train + held_out)
    data.setup()
    assert len(data.train_set) == 9


def test_image_text_records_with_embedded_images(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"image": ImageFeature(), "prompt": Value("string"), "response": Value("string")})
    rows = {"image": images, "prompt": ["describe it"] * 6, "response": [f"a shape {i}" for i in range(6)]}
    folder = tmp_path / "vqa"
    Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    processor = "hf:" + str(tiny_llava_processor(tmp_path / "processor"))
    data = create_datamodule("image_text", source=str(folder), processor=processor, seq_len=40, batch_size=2)
    data.setup()
    assert len(data.train_set) + len(data.val_set) == 6
    item = data.train_set[0]
    assert item["pixel_values"].shape == (3, 16, 16)  # decoded from the stored bytes when the row is read


def test_a_hub_name_offline_and_missing_columns_and_splits_are_one_line_errors(saved, tmp_path):
    with pytest.raises(DistillError, match=r"Hub cannot be reached from here \(offline\).*save_to_disk"):
        read_table("hf:nobody/nothing", [("text",)])
    missing = r"no column messages or prompt\+response or text; it has \['question', 'answer', 'id'\]"
    with pytest.raises(DistillError, match=missing):
        create_datamodule("text", source=saved, seq_len=32).documents  # noqa: B018
    with pytest.raises(DistillError, match=r"has no split 'validation' \(it has \['test', 'train'\]\)"):
        create_datamodule("text", source=saved, val_split="validation", columns={"text": "answer"}).documents  # noqa: B018
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "a b c"}\n{"text": "d e f"}\n')
    with pytest.raises(DistillError, match="data.revision names a split or revision of a Hugging Face datasets source"):
        create_datamodule("text", source=str(plain), revision="main")
