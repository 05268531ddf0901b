"""The open_clip zero-shot classifier (offline: the tiny randomly initialized CLIP) and frozen-model features."""

import pytest
import timm
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.models import create_model
from distill.models.clip import tiny_clip
from distill.models.features import feature_extractor
from distill.models.small import ConvNet

TEMPLATES = ["a photo of the number {}.", "the digit {}."]


def test_zero_shot_head_averages_the_normalized_template_embeddings():
    torch.manual_seed(0)
    model = create_model("open_clip:tiny", class_names=["zero", "one", "two"], templates=TEMPLATES, image_size=8)
    _, tokenizer = tiny_clip(8)
    for c, name in enumerate(["zero", "one", "two"]):
        texts = model.clip.encode_text(tokenizer([t.format(name) for t in TEMPLATES]))
        expected = F.normalize(F.normalize(texts, dim=-1).mean(0), dim=0)
        torch.testing.assert_close(model.class_weights[:, c], expected)
    grey = torch.randn(4, 1, 8, 8)
    logits = model(grey)
    image = F.normalize(model.clip.encode_image(grey.expand(-1, 3, -1, -1)), dim=-1)
    torch.testing.assert_close(logits, 100 * image @ model.class_weights)  # grey images repeated to RGB
    assert logits.shape == (4, 3) and logits.abs().max() <= 100 + 1e-4  # 100 x a cosine


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_names": None}, "gives no class names"),
        ({"class_names": ["a", "b"], "templates": ["no slot"]}, "needs a '{}'"),
    ],
)
def test_zero_shot_head_errors_are_named(kwargs, message):
    with pytest.raises(DistillError, match=message):
        create_model("open_clip:tiny", image_size=8, **kwargs)
    with pytest.raises(DistillError, match="unknown open_clip model 'NoSuchNet'"):
        create_model("open_clip:NoSuchNet", class_names=["a", "b"])


def test_features_are_what_the_classifier_reads():
    torch.manual_seed(0)
    images = torch.randn(3, 1, 8, 8)
    convnet = ConvNet(num_classes=10, in_chans=1, widths=[4, 8], hidden=6).eval()
    features = feature_extractor(convnet, "aux")(images)
    torch.testing.assert_close(convnet.head[-1](features), convnet(images))  # the last Linear maps them to logits
    assert features.shape == (3, 6)
    resnet = timm.create_model("test_resnet", num_classes=5).eval()
    pre_logits = feature_extractor(resnet, "aux")(torch.randn(2, 3, 32, 32))
    assert pre_logits.shape == (2, resnet.num_features)
    with pytest.raises(DistillError, match="has no linear classifier"):
        feature_extractor(torch.nn.Conv2d(1, 1, 1), "second_teacher")
