"""The `image_text` data module: JSONL image/prompt/response records made into rows by a (tiny, local) LLaVA
processor, offline."""

import json
import re

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from distill.data import DATASETS, ImageTextDataModule, create_datamodule
from distill.errors import DistillError
from tests.helpers_vlm import tiny_llava, tiny_llava_processor, write_image_text_jsonl

ROWS = [
    ("what is in this picture ?", "a red square in the corner ."),
    ("describe it", "a blue circle"),
    ("what is this ?", "a green square"),
    ("describe this picture", "a red circle in the corner ."),
] * 3
IMAGE_ID, PAD_ID, EOS_ID = 4, 1, 3  # tests/helpers_vlm.py's specials


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return "hf:" + str(tiny_llava_processor(tmp_path_factory.mktemp("processor")))


@pytest.fixture
def source(tmp_path):
    return str(write_image_text_jsonl(tmp_path, ROWS))


def make(source, processor, **kwargs):
    return create_datamodule("image_text", source=source, processor=processor, **{"seq_len": 24, **kwargs})


def test_is_registered_and_exposes_the_tokenizer(source, processor):
    from distill.data.interface import ClassData, TokenData

    data = make(source, processor)
    assert isinstance(data, TokenData) and not isinstance(data, ClassData)  # the interface the tasks read
    assert isinstance(data, ImageTextDataModule) and DATASETS.get("image_text") is ImageTextDataModule
    assert (data.tokenizer.eos_id, data.pad_id, data.image_token_id) == (EOS_ID, PAD_ID, IMAGE_ID)
    assert data.vocab_size == len(AutoProcessor.from_pretrained(processor[3:]).tokenizer) == 25
    assert data.model_args("student") == data.model_args("teacher") == {"vocab_size": 25}


def test_rows_expand_the_image_and_train_only_on_the_response(source, processor):
    data = make(source, processor, val_fraction=0.5)
    tokens = data.processor.tokenizer
    for rows in (data.train_set, data.val_set):
        for i in range(len(rows)):
            item = rows[i]
            ids, labels, mask = item["input_ids"], item["labels"], item["attention_mask"]
            assert ids.shape == labels.shape == mask.shape == (24,) and ids.dtype == torch.long
            assert ids[:7].tolist() == [2, *tokens.convert_tokens_to_ids(["USER", ":"]), *[IMAGE_ID] * 4]
            assert (ids == IMAGE_ID).sum() == 4
            length = int(mask.sum())
            assert mask[:length].all() and not mask[length:].any() and (ids[length:] == PAD_ID).all()
            prompt = ids.tolist().index(tokens.convert_tokens_to_ids("ASSISTANT")) + 2  # ... ASSISTANT : | response
            assert (labels[:prompt] == -100).all() and (labels[length:] == -100).all()
            assert torch.equal(labels[prompt:length], ids[prompt:length]) and ids[length - 1] == EOS_ID
            assert tokens.decode(ids[prompt : length - 1]) in {response for _, response in ROWS}


def test_items_carry_the_processed_image(source, processor):
    data = make(source, processor)
    item = data.val_set[0]
    assert item["pixel_values"].shape == (3, 16, 16) and item["pixel_values"].dtype == torch.float32
    assert item["pixel_values"][None].shape == (1, 3, 16, 16) and item["input_ids"][:5].shape == (5,)
    expected = data.processor(images=Image.open(data.val_set.images[0]), text="<image>", return_tensors="pt")
    assert torch.allclose(item["pixel_values"], expected["pixel_values"][0])


def test_batches_feed_a_llava_model(source, processor):
    data = make(source, processor, batch_size=4)
    batch = next(iter(data.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["input_ids"].shape == (4, 24)
    model = tiny_llava(vocab_size=data.vocab_size, image_token_id=data.image_token_id)
    with torch.no_grad():
        output = model(**batch)
    assert output.logits.shape == (4, 24, data.vocab_size) and torch.isfinite(output.loss)


def test_the_split_is_disjoint_complete_and_seeded(source, processor):
    def split(**kwargs):
        data = make(source, processor, val_fraction=0.25, **kwargs)
        return [str(p) for p in data.train_set.images], [str(p) for p in data.val_set.images]

    train, val = split()
    assert len(val) == 3 and not set(train) & set(val) and len(set(train) | set(val)) == len(ROWS)
    assert split() == (train, val) and split(split_seed=1) != (train, val)
    assert len(sum(split(max_records=4), [])) == 4
    data = make(source, processor)
    assert data.test_set is data.val_set


def test_long_rows_are_cut_and_rows_without_a_response_dropped(tmp_path, processor):
    # the short prompt is 13 tokens (bos, 'USER :', 4 image tokens, 4 words, 'ASSISTANT :'), the long one 27
    short, long = ("what is this ?", "a red square in the corner ."), (" ".join(["describe this picture"] * 6), "a")
    source = str(write_image_text_jsonl(tmp_path, [short, long, short, short, long, short]))
    with pytest.warns(UserWarning, match=r"dropped \d rows with no response token within data.seq_len"):
        data = make(source, processor, seq_len=16, val_fraction=0.5)
        rows = [*data.train_set, *data.val_set]
    assert len(rows) == 4 and sum(data.dropped_rows.values()) == 2
    for row in rows:  # cut after 3 response tokens: no eos, no padding
        assert row["attention_mask"].all() and (row["labels"] != -100).sum() == 3 and EOS_ID not in row["input_ids"]


def test_absolute_image_paths(tmp_path, processor):
    write_image_text_jsonl(tmp_path, ROWS[:2])
    lines = [
        {"image": str(tmp_path / "images" / f"{i}.png"), "prompt": p, "response": r}
        for i, (p, r) in enumerate(ROWS[:2])
    ]
    (tmp_path / "elsewhere").mkdir()
    source = tmp_path / "elsewhere" / "abs.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines))
    assert len(make(str(source), processor).train_set) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        (
            '{"image": "images/0.png", "prompt": "what"}',
            "line 2: needs string values for ('image', 'prompt', 'response'); missing or not a string: ['response']",
        ),
        ('{"image": "images/9.png", "prompt": "p", "response": "r"}', "line 2: no such image file"),
        (
            '{"image": "images/0.png", "prompt": "<image>", "response": "r"}',
            "images/0.png': The total number of <image>",
        ),
        ('{"image": "data.jsonl", "prompt": "p", "response": "r"}', "cannot read image"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path, processor, line, message):
    source = write_image_text_jsonl(tmp_path, ROWS[:3])
    lines = source.read_text().splitlines()
    source.write_text("\n".join([lines[0], line, lines[1]]) + "\n")
    with pytest.raises(DistillError, match=re.escape(message)) as info:
        make(str(source), processor).setup()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "nowhere.jsonl"}, "data.source: no such file or folder 'nowhere.jsonl'"),
        ({"source": None}, "data.source is required: a .jsonl file of ('image', 'prompt', 'response') lines"),
        ({"processor": "llava-hf/llava-1.5-7b-hf"}, "data.processor must be 'hf:<name_or_path>'"),
        ({"processor": "hf:/no/such/folder"}, "data.processor 'hf:/no/such/folder': cannot load it"),
        ({"processor": "hf:nobody/no-such-model"}, "use 'hf:<folder>'"),
        ({"prompt_template": "USER: <image> ASSISTANT:"}, "data.prompt_template must contain '{prompt}'"),
        ({"prompt_template": "USER: {prompt} ASSISTANT:"}, "lacks the processor's image token '<image>'"),
        ({"seq_len": 4}, "data.seq_len must be >= 8, got 4"),
        ({"max_records": 1}, "data.max_records must be >= 2, got 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(source, processor, kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)) as info:
        make(**{"source": source, "processor": processor, **kwargs})
    assert "\n" not in str(info.value)


def test_a_file_with_one_record_cannot_be_split(tmp_path, processor):
    source = write_image_text_jsonl(tmp_path, ROWS[:1])
    with pytest.raises(DistillError, match="has 1 record; need >= 2"):
        make(str(source), processor).setup()
