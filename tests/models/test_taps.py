"""Layers named the way recipes name them (`distill.models.taps`): module paths, `:input`, and a Hugging Face
language model's hidden-state indices, read by forward hooks that are gone after the pass."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models import create_model
from distill.models.causal_lm import llama
from distill.models.taps import captured, resolve_tap


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    model = llama(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return model.eval()


def test_hidden_state_indices_are_the_models_own_output_hidden_states():
    model = tiny_llama()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    taps = [resolve_tap(model, index, "student") for index in (0, 1, 2, 3, -1, -4)]
    with torch.no_grad(), captured(taps) as found:
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hidden) == 4  # the embeddings and three layers, the last after the final norm
    for got, index in zip(found, (0, 1, 2, 3, 3, 0), strict=True):
        torch.testing.assert_close(got, hidden[index], rtol=0, atol=0)


def test_input_suffix_reads_what_a_layer_is_given():
    model = create_model("resnet8x4", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), captured([resolve_tap(model, "fc:input", "student")]) as found:
        model(x)
    torch.testing.assert_close(found[0], model.forward_features(x))  # the pooled embedding the classifier reads


def test_the_hooks_are_removed_when_the_pass_is_over():
    model = create_model("resnet8x4", num_classes=10)
    taps = [resolve_tap(model, name, "student") for name in ("layer1", "layer2", "fc:input")]
    with captured(taps) as found:
        model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in found] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256)]
    assert all(not module._forward_hooks for module in model.modules())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("layr2", "CifarResNet has no layer 'layr2' (did you mean 'layer2'?)"),
        ("layer2.7", "no layer 'layer2.7' (did you mean 'layer2.0'?)"),
        (3, "layer 3 is a hidden-state index, which only Hugging Face language models have"),
    ],
)
def test_an_unknown_layer_names_the_closest(name, message):
    with pytest.raises(DistillError, match="^student: ") as error:
        resolve_tap(create_model("resnet8x4", num_classes=10), name, "student")
    assert message in str(error.value)


def test_a_hidden_state_past_the_last_layer_says_which_exist():
    with pytest.raises(DistillError, match="hidden state 4 does not exist: the model has 0..3"):
        resolve_tap(tiny_llama(), 4, "teacher")
