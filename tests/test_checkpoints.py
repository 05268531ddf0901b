"""Reading weights safely (weights_only) from the formats users have, loading them with one-line errors, and
writing checkpoints atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

import distill.models.weights as checkpoints
from distill.errors import DistillError
from distill.models import create_model
from distill.models.weights import atomic_save, extract_state_dict, load_weights, read_checkpoint

RAN: list[str] = []  # what unpickled payloads executed


def _record_execution(tag: str) -> str:
    RAN.append(tag)
    return tag


class Payload:
    """An arbitrary object: unpickling it calls `_record_execution`, i.e. runs code."""

    def __reduce__(self):
        return (_record_execution, ("payload ran",))


def convnet(widths: list[int] = [8, 16], num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("convnet", num_classes, 1, widths=widths, hidden=16)


def quoted_key(message: str, after: str) -> str:
    match = re.search(after + r" \(e\.g\. '([^']+)'\)", message)
    assert match, message
    return match.group(1)


# read_checkpoint


def test_pickled_code_is_refused_and_not_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    RAN.clear()
    with pytest.raises(DistillError, match="cannot read") as info:
        read_checkpoint(path, "teacher.checkpoint")
    assert RAN == []
    assert str(path) in str(info.value) and str(info.value).startswith("teacher.checkpoint:")
    torch.load(path, weights_only=False)  # the payload does run code when loaded unsafely: the check above is real
    assert RAN == ["payload ran"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(DistillError, match="file not found") as info:
        read_checkpoint(path, "teacher.checkpoint")
    assert str(path) in str(info.value)


def test_truncated_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DistillError, match="truncated, corrupt") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("payload", [torch.zeros(3), [torch.zeros(3)]], ids=["tensor", "list"])
def test_non_dict_payload_is_refused(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(DistillError, match=f"holds a {type(payload).__name__}, not a state dict"):
        read_checkpoint(path)


def test_reads_back_a_saved_dict(tmp_path: Path) -> None:
    state = {"w": torch.randn(2, 3), "meta": {"epoch": 3}}
    torch.save(state, tmp_path / "ok.pt")
    data = read_checkpoint(tmp_path / "ok.pt")
    assert torch.equal(data["w"], state["w"]) and data["meta"] == {"epoch": 3}


# extract_state_dict


def test_distill_checkpoint_gives_the_student_without_the_teacher() -> None:
    a, b, t = torch.randn(2), torch.randn(3), torch.randn(4)
    data = {
        "state_dict": {"student.head.weight": a, "student.head.bias": b, "teacher.head.weight": t},
        "epoch": 4,
        "distill": {"recipe": {}},
    }
    state = extract_state_dict(data)
    assert set(state) == {"head.weight", "head.bias"}
    assert state["head.weight"] is a and state["head.bias"] is b


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "epoch": 200, "optimizer": {"lr": 0.1}},  # the CIFAR teacher lineage
        lambda sd: {"state_dict": sd, "epoch": 1},
        lambda sd: sd,
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # saved from DataParallel
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["model", "state_dict", "raw", "dataparallel", "model-dataparallel"],
)
def test_extract_state_dict_formats(wrap) -> None:
    sd = {"features.0.weight": torch.randn(2, 1, 3, 3), "head.1.bias": torch.randn(2)}
    state = extract_state_dict(wrap(sd))
    assert set(state) == set(sd)
    assert all(state[k] is sd[k] for k in sd)


def test_module_prefix_is_kept_when_not_every_key_has_it() -> None:
    sd = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert set(extract_state_dict(sd)) == {"module.a", "b"}


# load_weights


def test_load_weights_loads_exactly(tmp_path: Path) -> None:
    source, target = convnet(seed=1), convnet(seed=2)
    source(torch.randn(4, 1, 8, 8))  # BatchNorm running statistics move away from their initial values
    path = tmp_path / "w.pt"
    torch.save({"model": source.state_dict()}, path)
    assert not torch.equal(source.head[-1].weight, target.head[-1].weight)
    load_weights(target, path, "teacher.checkpoint")
    expected = source.state_dict()
    for key, value in target.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_load_weights_from_a_distill_checkpoint(tmp_path: Path) -> None:
    student, target = convnet(seed=1), convnet(seed=2)
    other = convnet(widths=[4], seed=3)
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state |= {f"teacher.{k}": v for k, v in other.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "last.ckpt")
    load_weights(target, tmp_path / "last.ckpt", "--checkpoint")
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in target.state_dict().items())


@pytest.mark.parametrize(
    ("file_widths", "model_widths", "kind"),
    [([8, 16, 16], [8, 16], "unexpected"), ([8, 16], [8, 16, 16], "missing")],
)
def test_another_architecture(tmp_path: Path, file_widths: list[int], model_widths: list[int], kind: str) -> None:
    saved, model = convnet(file_widths), convnet(model_widths, seed=5)
    path = tmp_path / "w.pt"
    torch.save({"model": saved.state_dict()}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DistillError, match="is for another architecture") as info:
        load_weights(model, path, "teacher.checkpoint")
    message = str(info.value)
    assert "\n" not in message and message.startswith("teacher.checkpoint:") and str(path) in message
    file_keys, model_keys = set(saved.state_dict()), set(model.state_dict())
    differing = file_keys - model_keys if kind == "unexpected" else model_keys - file_keys
    assert quoted_key(message, rf"{len(differing)} {kind} keys") in differing
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_different_class_count_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    saved, model = convnet(num_classes=10), convnet(num_classes=7)
    path = tmp_path / "w.pt"
    torch.save(saved.state_dict(), path)
    with pytest.raises(DistillError, match="does not fit the model") as info:
        load_weights(model, path, "teacher.checkpoint")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    key = re.search(r"'([^']+)' has shape", message).group(1)
    file_shape, model_shape = list(saved.state_dict()[key].shape), list(model.state_dict()[key].shape)
    assert file_shape != model_shape
    assert f"{file_shape} in the file" in message and f"{model_shape} in the model" in message


# atomic_save


def test_atomic_save_writes_a_complete_file_and_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "store" / "teacher.pt"  # the folder is created
    obj = {"model": {"w": torch.randn(32, 32)}, "distill": {"metrics": {"test/acc": 0.9}}}
    atomic_save(obj, path)
    assert os.listdir(path.parent) == ["teacher.pt"]
    data = read_checkpoint(path)
    assert torch.equal(data["model"]["w"], obj["model"]["w"]) and data["distill"] == obj["distill"]


def test_atomic_save_file_mode_follows_the_umask(tmp_path: Path) -> None:
    """Like any file the process writes (a teacher store is shared), not owner-only as tempfile's are."""
    atomic_save({"w": torch.zeros(1)}, tmp_path / "teacher.pt")
    (tmp_path / "plain").write_bytes(b"")
    assert oct((tmp_path / "teacher.pt").stat().st_mode) == oct((tmp_path / "plain").stat().st_mode)


def test_failed_save_leaves_the_previous_file_and_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "teacher.pt"
    atomic_save({"w": torch.ones(8)}, path)
    before = path.read_bytes()

    def dies_midway(obj: object, f) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # like a kill: BaseException, not Exception

    monkeypatch.setattr(checkpoints.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(8)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["teacher.pt"]
