"""The tiny LLaVA: built from the captions data, image features merged at the image tokens, cache, loss, training."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill.config.components import INJECTED_MODEL_ARGS
from distill.data import CaptionsDataModule, create_datamodule
from distill.errors import DistillError
from distill.models import create_model, model_for_data
from tests.config.recipe_texts import load_error


@pytest.fixture(scope="module")
def captions() -> CaptionsDataModule:
    datamodule = create_datamodule("captions", num_images=40, batch_size=4)
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def batch(captions) -> dict[str, torch.Tensor]:
    return next(iter(captions.val_dataloader()))


def tiny(captions: CaptionsDataModule) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_for_data({"name": "llava_tiny"}, captions, "teacher").eval()


@pytest.fixture(scope="module")
def model(captions) -> torch.nn.Module:
    return tiny(captions)


def test_built_from_the_data_and_by_name(captions, model):
    config = model.config
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert (config.image_token_id, config.image_token_index, config.text_config.vocab_size) == (259, 259, 260)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (32, 8)
    assert (config.vision_feature_select_strategy, config.vision_feature_layer) == ("default", -1)
    by_name = create_model("llava_tiny", **captions.model_args("student"))
    assert sum(p.numel() for p in by_name.parameters()) == sum(p.numel() for p in model.parameters())
    assert model.get_input_embeddings().weight.shape == (260, 64)


@torch.no_grad()
def test_forward_shapes_and_hidden_states(batch, model):
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    b, t = batch["input_ids"].shape
    assert out.logits.shape == (b, t, 260)
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert all(h.shape == (b, t, 64) for h in out.hidden_states)
    torch.testing.assert_close(model.get_output_embeddings()(out.hidden_states[-1]), out.logits)
    plain = model.get_input_embeddings()(batch["input_ids"])
    image = batch["input_ids"] == 259
    assert image[:, 1:17].all() and image.sum() == b * 16
    assert torch.equal(out.hidden_states[0][~image], plain[~image])
    assert ((out.hidden_states[0][image] - plain[image]).abs().amax(-1) > 1e-3).all()  # the image features


@torch.no_grad()
def test_incremental_decoding_with_a_cache_matches_the_full_pass(captions, model):
    from transformers import DynamicCache

    item = captions.val_set[0]
    ids = item["input_ids"][item["attention_mask"].bool()][None]
    pixels = item["pixel_values"][None]
    full = model(input_ids=ids, pixel_values=pixels).logits
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    prompt = 1 + captions.num_image_tokens + 3
    steps = [model(input_ids=ids[:, :prompt], pixel_values=pixels, use_cache=True, **{name: cache}).logits]
    for i in range(prompt, ids.shape[1]):
        steps.append(model(input_ids=ids[:, i : i + 1], use_cache=True, **{name: cache}).logits)
    assert cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_loss_is_next_token_cross_entropy_ignoring_minus_100(batch, model):
    out = model(**batch)
    labels = batch["labels"]
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_a_few_steps_on_one_batch_lower_the_loss(captions, batch):
    model = tiny(captions).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_the_data_sets_the_image_arguments(tmp_path: Path):
    assert {"vocab_size", "image_token_id", "image_size", "patch_size"} <= set(INJECTED_MODEL_ARGS)
    message = load_error(tmp_path, "data: {name: captions}\nstudent: {name: llava_tiny, image_size: 64}\n")
    assert "'student.image_size' is set from the dataset" in message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 30}, "llava_tiny: image_size (30) must be divisible by patch_size (8)"),
        ({"image_token_id": 260}, "llava_tiny: image_token_id (260) must be in [0, vocab_size=260)"),
        ({"vision_heads": 3}, "llava_tiny: vision_hidden_size (32) must be divisible by the heads (3)"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        create_model("llava_tiny", **kwargs)
