"""The offline teacher cache of language models through `distill fit`: the first run announces and stores the
teacher's top-k, a later run reads it without loading the teacher, one with rows missing fills them in with the same
numbers, and a cache made for other data, another teacher or another k is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers.models.llama import modeling_llama

from distill.cli import main
from distill.config.load import load_recipe
from distill.engine import pipeline
from distill.engine.wiring import prepare_data
from distill.errors import DistillError
from distill.teachers.cache_setup import open_teacher_cache
from tests.cli.test_llm_recipes import TINY

TEACHER_WIDTH = 128  # llm_kd_tiny's teacher; the student is 64 wide
CACHE = ["teacher.cache=runs/lm_cache", "teacher.cache_top_k=32"]
WHOLE_EPOCH = ["trainer.limit_train_batches=1.0", "trainer.limit_val_batches=1.0"]  # every row reaches the cache


def widths_run(monkeypatch) -> list[int]:
    """Records the width of every Llama backbone that runs (a teacher forward shows up as 128)."""
    widths: list[int] = []
    forward = modeling_llama.LlamaModel.forward

    def recording(self, *args, **kwargs):
        widths.append(self.config.hidden_size)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", recording)
    return widths


def frozen_loads(monkeypatch) -> list[str]:
    """Records the role of every frozen model the engine loads."""
    roles: list[str] = []
    load = pipeline.load_frozen

    def recording(plan, data):
        roles.append(plan.role)
        return load(plan, data)

    monkeypatch.setattr(pipeline, "load_frozen", recording)
    return roles


def test_later_runs_read_the_teacher_from_the_cache_and_another_k_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", "llm_kd_tiny", *TINY, *CACHE, *WHOLE_EPOCH]) == 0  # trains the teacher, fills
    announced = "teacher.cache: storing the teacher's next-token distribution (top 32 of 259 entries): 276 bytes"
    assert announced in capsys.readouterr().out
    widths, loads = widths_run(monkeypatch), frozen_loads(monkeypatch)
    assert main(["fit", "--recipe", "llm_kd_tiny", *TINY, *CACHE]) == 0
    out = capsys.readouterr().out
    assert "storing" not in out and "the teacher is not loaded" in out
    assert TEACHER_WIDTH not in widths and widths  # the student ran, the teacher never did
    assert loads == []  # nor was it built or its weights read
    runs = tmp_path / "runs" / "llm_kd_tiny"
    results = [json.loads((runs / f"version_{v}" / "results.json").read_text())["test"] for v in (0, 1)]
    teacher_numbers = ("test/teacher_loss", "test/teacher_ppl")  # from the cache, in the run without the teacher
    assert [results[1][key] for key in teacher_numbers] == [results[0][key] for key in teacher_numbers]

    # a cache with rows missing (a first run killed part-way) loads the teacher and fills them in
    filled = np.load(tmp_path / "runs" / "lm_cache" / "train_00000_filled.npy", mmap_mode="r+")
    filled[:5] = False
    filled.flush()
    del filled
    assert main(["fit", "--recipe", "llm_kd_tiny", *TINY, *CACHE]) == 0
    assert "the teacher is not loaded" not in capsys.readouterr().out and loads == ["teacher"]
    assert json.loads((runs / "version_2" / "results.json").read_text())["test"] == results[1]

    assert main(["fit", "--recipe", "llm_kd_tiny", *TINY, CACHE[0], "teacher.cache_top_k=16"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "holds the outputs of another setup (differs in: top_k)" in error[0]
    assert not (runs / "version_3").exists()


def open_cache(*overrides: str, weights: str = "teacher.pt") -> None:
    loaded = load_recipe("llm_kd_tiny", ["data.max_documents=30", "teacher.cache=lm_cache", *overrides])
    open_teacher_cache(loaded.recipe, prepare_data(loaded), {"weights": weights})


def test_rows_tokenized_or_packed_otherwise_and_another_teacher_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_cache("data.seq_len=64")
    with pytest.raises(DistillError, match=r"differs in: data, positions, rows, rows_sha256\)"):
        open_cache("data.seq_len=96")
    with pytest.raises(DistillError, match=r"differs in: data, rows, rows_sha256\)"):
        open_cache("data.seq_len=64", "data.packing=false")
    with pytest.raises(DistillError, match=r"differs in: teacher\)"):
        open_cache("data.seq_len=64", weights="other.pt")
    open_cache("data.seq_len=64", "data.batch_size=3")  # how rows are batched does not change them


def test_a_cache_serves_runs_that_pad_their_batches_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_cache("data.seq_len=64")
    open_cache("data.seq_len=64", "data.padding=longest", "data.pad_to_multiple_of=16")  # the same rows: accepted
