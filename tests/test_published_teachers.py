"""Teachers fetched from an address (`teacher.checkpoint: published` or a URL) into the store, against a server on
127.0.0.1 serving an archive in mdistiller's layout: the order of resolution (file, store, download, training by
recipe), the checks (checksum, structure), the record beside a stored teacher, offline errors, and two processes
resolving the same missing teacher at once."""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from pathlib import Path

import pytest
import torch

import distill.engine.pipeline as pipeline
from distill.cli import main
from distill.config import load_recipe
from distill.data.synthetic import write_fake_cifar100
from distill.engine.wiring import prepare_data
from distill.errors import DistillError
from distill.models import create_model
from distill.teachers.published import MDISTILLER_URL, URL_ENV, stored_record
from distill.teachers.resolve import plan_frozen
from tests.helpers_download import FileServer, checkpoint_bytes, cifar_archive, run_in_processes, teachers_archive

RECIPE = "kd_resnet56_resnet20_cifar100"  # teacher resnet56: published, and small
MEMBER = "cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth"


def always(label: int, model: str = "resnet56") -> dict[str, torch.Tensor]:
    """A CIFAR-100 model's state dict that answers `label` for every image: its accuracy is known from the labels."""
    torch.manual_seed(0)
    state = create_model(model, num_classes=100).state_dict()
    state["fc.weight"].zero_()
    state["fc.bias"].zero_()
    state["fc.bias"][label] = 1.0
    return state


@pytest.fixture
def world(tmp_path, monkeypatch):
    """CIFAR-100 in the official layout, a store, and the published archive served as the teachers' address."""
    folder = write_fake_cifar100(tmp_path / "cifar", n_train=16, n_test=40, seed=0)
    with open(folder / "test", "rb") as file:
        labels = pickle.load(file)[b"fine_labels"]
    label = max(set(labels), key=labels.count)
    member = checkpoint_bytes(always(label), epoch=240)
    monkeypatch.delenv("DISTILL_OFFLINE")
    monkeypatch.chdir(tmp_path)
    with FileServer() as server:
        monkeypatch.setenv(URL_ENV, server.add("cifar_teachers.tar", teachers_archive({"resnet56": member})))
        yield {
            "server": server,
            "member": member,
            "accuracy": 100.0 * labels.count(label) / len(labels),
            "store": tmp_path / "teachers",
            "overrides": [
                f"data.root={tmp_path / 'cifar'}",
                "data.num_workers=0",
                f"teacher.store={tmp_path / 'teachers'}",
            ],
        }


def resolve(overrides: list[str]):
    """The recipe's teacher as a run resolves it, and its plan."""
    loaded = load_recipe(RECIPE, overrides)
    return pipeline.provide_frozen(loaded, prepare_data(loaded))["teacher"], plan_frozen(loaded, "teacher", "-")


def test_the_published_teacher_is_fetched_checked_measured_and_stored_once(world, capsys):
    teacher, plan = resolve(world["overrides"])
    entry = plan.weights.parent
    assert entry.parent == world["store"] and entry.name.startswith("resnet56-published-")
    assert plan.weights.read_bytes() == world["member"]  # the published file, as published
    assert torch.equal(teacher.model.state_dict()["fc.bias"], torch.load(plan.weights)["model"]["fc.bias"])
    record = stored_record(plan.weights)
    assert record["sha256"] == hashlib.sha256(world["member"]).hexdigest()
    assert record["test_accuracy"] == pytest.approx(world["accuracy"]) and record["test_images"] == 40
    assert (record["url"], record["member"]) == (world["server"].url("cifar_teachers.tar"), MEMBER)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"distill: teacher resnet56 (mdistiller cifar_teachers.tar): test accuracy {world['accuracy']:.2f} %, "
        f"stored in {entry}"
    )
    assert sorted(p.name for p in entry.iterdir() if not p.name.startswith(".")) == ["source.json", "teacher.pt"]
    assert (world["store"] / "downloads" / "cifar_teachers.tar").is_file()  # kept for the other teachers it holds

    again, _ = resolve(world["overrides"])  # the store, before any download
    assert world["server"].count("cifar_teachers.tar") == 1 and "distill: teacher" not in capsys.readouterr().out
    assert teacher.source == again.source and teacher.source["address"].endswith(f"(member {MEMBER})")


def test_a_file_comes_before_the_store_and_the_download(world, tmp_path):
    torch.save({"model": always(3)}, tmp_path / "mine.pth")
    teacher, _ = resolve([*world["overrides"], f"teacher.checkpoint={tmp_path / 'mine.pth'}"])
    assert teacher.model.state_dict()["fc.bias"].argmax() == 3
    assert world["server"].requests == [] and not world["store"].exists()


def test_the_download_comes_before_training_by_the_recipe(world, monkeypatch):
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("trained although it could be fetched"))
    resolve([*world["overrides"], "teacher.recipe=teacher_resnet56_cifar100"])
    assert world["server"].count("cifar_teachers.tar") == 1


def fake_fit(trained: Path):
    """Stands in for the teacher's training run: writes its 'best checkpoint' and marks each run in `trained`."""

    def fit(loaded, *args, **kwargs):
        with open(trained, "a") as marks:
            marks.write(f"{loaded.name}\n")
        time.sleep(1.0)  # a second process asks meanwhile
        best = Path(loaded.recipe.run.root) / "best.ckpt"
        best.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": always(7)}, best)
        return pipeline.FitResult(best.parent, best, {"test/acc": 0.5}, loaded.resolved)

    return fit


def test_where_nothing_can_be_fetched_the_teacher_recipe_trains_it_once(world, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    monkeypatch.setattr(pipeline, "fit", fake_fit(tmp_path / "trained.txt"))
    overrides = [*world["overrides"], "teacher.recipe=teacher_resnet56_cifar100"]
    with pytest.warns(UserWarning, match=r"^teacher.checkpoint: published resnet56: not found and downloads are off"):
        teacher, plan = resolve(overrides)
    assert (
        teacher.model.state_dict()["fc.bias"].argmax() == 7
        and "teacher_resnet56_cifar100-" in teacher.source["weights"]
    )
    assert (tmp_path / "trained.txt").read_text() == "teacher_resnet56_cifar100\n"
    resolve(overrides)  # stored: neither fetched nor trained again
    assert (tmp_path / "trained.txt").read_text() == "teacher_resnet56_cifar100\n" and world["server"].requests == []


def test_two_processes_resolving_the_same_missing_teacher_fetch_it_once(world):
    world["server"].files["cifar_teachers.tar"].delay = 1.0  # the first is still fetching when the second asks
    digests = run_in_processes(resolve_in_process, [(world["overrides"],)] * 2)
    assert digests == [hashlib.sha256(world["member"]).hexdigest()] * 2
    assert world["server"].count("cifar_teachers.tar") == 1


def test_two_processes_training_the_same_missing_teacher_train_it_once(world, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    monkeypatch.setattr(pipeline, "fit", fake_fit(tmp_path / "trained.txt"))  # inherited by the forked processes
    overrides = [*world["overrides"], "teacher.recipe=teacher_resnet56_cifar100"]
    first, second = run_in_processes(resolve_in_process, [(overrides,)] * 2)
    assert first == second and (tmp_path / "trained.txt").read_text().count("\n") == 1


def resolve_in_process(overrides: list[str]) -> str:
    """Resolve the recipe's teacher in this process: the sha256 of the stored weights it reads."""
    teacher, _ = resolve(overrides)
    return hashlib.sha256(Path(teacher.source["weights"]).read_bytes()).hexdigest()


def test_a_published_file_that_does_not_fit_the_model_is_refused_and_nothing_is_stored(world):
    world["server"].add("cifar_teachers.tar", teachers_archive({"resnet56": checkpoint_bytes(always(1, "resnet20"))}))
    with pytest.raises(DistillError) as error:
        resolve(world["overrides"])
    message = str(error.value)
    assert message.startswith(
        f"teacher.checkpoint: {world['server'].url('cifar_teachers.tar')} (member {MEMBER}) does not fit "
        "teacher.model resnet56: is for another architecture: "
    )
    assert message.endswith("; nothing was stored") and "\n" not in message
    (entry,) = [p for p in world["store"].iterdir() if p.name != "downloads"]
    assert [p.name for p in entry.iterdir() if not p.name.startswith(".")] == []


def test_a_teacher_named_by_url_is_fetched_once_and_checked_by_its_sha256(world, capsys):
    url = world["server"].add("resnet56.pth", world["member"])
    sha = hashlib.sha256(world["member"]).hexdigest()
    overrides = [*world["overrides"], f"teacher.checkpoint={url}", f"teacher.checkpoint_sha256={sha}"]
    teacher, plan = resolve(overrides)
    assert plan.weights.parent.name.startswith("resnet56-url-") and plan.weights.read_bytes() == world["member"]
    assert stored_record(plan.weights)["url"] == url and stored_record(plan.weights)["member"] is None
    assert f"distill: teacher resnet56 ({url}): test accuracy" in capsys.readouterr().out
    resolve(overrides)
    assert world["server"].count("resnet56.pth") == 1

    wrong = world["server"].add("other.pth", checkpoint_bytes(always(2)))
    found = hashlib.sha256(world["server"].files["other.pth"].data).hexdigest()
    with pytest.raises(DistillError) as error:
        resolve([*world["overrides"], f"teacher.checkpoint={wrong}", f"teacher.checkpoint_sha256={sha}"])
    assert str(error.value) == (
        f"teacher.checkpoint: {wrong} does not match its checksum: expected sha256 {sha}, found {found}; "
        "nothing was kept"
    )
    (entry,) = [p for p in world["store"].iterdir() if p != plan.weights.parent]
    assert [p.name for p in entry.iterdir() if not p.name.startswith(".")] == []


def test_offline_a_missing_published_teacher_is_one_line_naming_what_to_fill(world, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    monkeypatch.delenv(URL_ENV)  # the real address, named in the message
    assert main(["fit", "--recipe", RECIPE, *world["overrides"]]) == 2
    archive = world["store"] / "downloads" / "cifar_teachers.tar"
    assert capsys.readouterr().err == (
        "distill: error: teacher.checkpoint: published resnet56: not found and downloads are off (DISTILL_OFFLINE=1): "
        f"put {MDISTILLER_URL} at {archive} (it holds {MEMBER}), or train it first: "
        "teacher.recipe=teacher_resnet56_cifar100\n"
    )
    assert not world["store"].exists() and not list(Path("runs").glob("*/version_*"))  # nothing written

    # the advice works as written: the archive put there is read offline
    archive.parent.mkdir(parents=True)
    archive.write_bytes(world["server"].files["cifar_teachers.tar"].data)
    _, plan = resolve(world["overrides"])
    assert plan.weights.read_bytes() == world["member"] and world["server"].requests == []


def test_a_model_with_no_published_teacher(world):
    overrides = [*world["overrides"], "teacher.model.name=resnet8x4"]
    with pytest.raises(DistillError) as error:
        plan_frozen(load_recipe(RECIPE, overrides), "teacher", "classification")
    assert str(error.value) == (
        "teacher.checkpoint: no published resnet8x4: mdistiller's cifar_teachers.tar holds resnet32x4, resnet56, "
        "resnet110, vgg13, wrn_40_2; give a file, or train it first: teacher.recipe=teacher_resnet32x4_cifar100 "
        "teacher.overrides=[student.name=resnet8x4]"
    )
    advice = str(error.value).split("train it first: ")[1].split()
    plan = plan_frozen(load_recipe(RECIPE, overrides + advice), "teacher", "classification")
    assert plan.needs_training and plan.run.recipe.student["name"] == "resnet8x4"
    assert plan.why == "teacher.checkpoint: no published resnet8x4"


def test_the_record_is_json_beside_the_teacher(world):
    _, plan = resolve(world["overrides"])
    assert json.loads(plan.weights.with_name("source.json").read_text()) == stored_record(plan.weights)


def test_a_fresh_machine_runs_a_cifar_recipe_in_one_go(tmp_path, monkeypatch, capsys):
    """Nothing on disk: `distill fit` downloads CIFAR-100 and the published teacher (both served here), stores the
    teacher with its measured accuracy, and trains."""
    import distill.data.cifar as cifar

    monkeypatch.delenv("DISTILL_OFFLINE")
    monkeypatch.chdir(tmp_path)
    data = cifar_archive(tmp_path / "made", n_train=32, n_test=16)
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(data).hexdigest())
    member = checkpoint_bytes(always(0), epoch=240)
    with FileServer() as server:
        monkeypatch.setenv(cifar.URL_ENV, server.add("cifar-100-python.tar.gz", data))
        monkeypatch.setenv(URL_ENV, server.add("cifar_teachers.tar", teachers_archive({"resnet56": member})))
        limits = ["data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
        limits += ["trainer.limit_val_batches=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
        assert main(["fit", "--recipe", RECIPE, *limits]) == 0
    printed = capsys.readouterr().out
    assert "distill: teacher resnet56 (mdistiller cifar_teachers.tar): test accuracy " in printed
    assert (tmp_path / "data" / "cifar100" / "cifar-100-python" / "train").is_file()
    (stored,) = (tmp_path / "runs" / "teachers").glob("resnet56-published-*/teacher.pt")
    assert stored.read_bytes() == member
    (run,) = (tmp_path / "runs" / RECIPE).glob("version_0")
    assert json.loads((run / "sources.json").read_text())["teacher"]["weights"] == str(stored)
