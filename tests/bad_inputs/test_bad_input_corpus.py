"""The bad-input corpus: malformed recipes, overrides and data, each answered by `distill` with exit status 2 and one
line that names the problem, no traceback, and nothing that existed before touched (docs/design.md).

Each case is `(name, how to make it, expected words)`: `args` for the command line after `distill fit`, built from
the base recipe (a digits run with a teacher checkpoint) or from a recipe file written for the case."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distill.cli import main
from distill.data.synthetic import write_fake_cifar100
from distill.models import create_model

BASE = {
    "description": "bad input",
    "seed": 0,
    "run": {"root": "runs", "name": "bad"},
    "data": {"name": "digits", "batch_size": 32},
    "student": {"name": "convnet", "widths": [4, 8], "hidden": 0},
    "teacher": {"model": {"name": "convnet", "widths": [4, 8], "hidden": 8}, "checkpoint": "teacher.pt"},
    "loss": {"ce_weight": 0.1, "terms": {"kd": {"weight": 0.9, "temperature": 4.0}}},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1},
}


def recipe(folder: Path, name: str, **changes) -> str:
    """A recipe file: BASE with top-level sections replaced (None removes one)."""
    content = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def text(folder: Path, name: str, content: str) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(content)
    return str(path)


def cifar_with_label(folder: Path, label: int) -> str:
    root = folder / "cifar_bad"
    write_fake_cifar100(root, n_train=20, n_test=10, seed=0)
    path = root / "cifar-100-python" / "train"
    with open(path, "rb") as file:
        content = pickle.load(file)
    content[b"fine_labels"][3] = label
    with open(path, "wb") as file:
        pickle.dump(content, file)
    return str(root)


def jsonl(folder: Path, name: str, lines: list[str]) -> str:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def txt(folder: Path, name: str) -> str:
    path = folder / name
    path.write_text("one document\n\nanother document\n")
    return str(path)


def junk(folder: Path, name: str) -> str:
    """A text file under a name that promises another format."""
    path = folder / name
    path.write_text("question,answer\nnot,parquet\n")
    return str(path)


def broken_saved_dataset(folder: Path) -> str:
    """A folder that looks written by save_to_disk (its dataset_info.json) and holds nothing readable."""
    path = folder / "saved_bad"
    path.mkdir(exist_ok=True)
    (path / "dataset_info.json").write_text("{not json")
    return str(path)


def parquet(folder: Path, name: str, **columns: list) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / name
    pq.write_table(pa.table(columns), path)
    return str(path)


B = "BASE"  # stands for the base recipe's path
CASES = [
    (
        "yaml syntax error",
        lambda f: ["--recipe", text(f, "syntax", "data: [digits\nseed: 0\n")],
        "syntax.yaml:2:5: YAML syntax error",
    ),
    ("unknown top-level key", lambda f: ["--recipe", B, "dta.x=1"], "unknown key 'dta' (did you mean 'data'?)"),
    ("unknown nested key", lambda f: ["--recipe", B, "loss.terms.kd.temprature=2"], "did you mean 'temperature'"),
    ("wrong type", lambda f: ["--recipe", B, "optimizer.lr=fast"], "'optimizer.lr' must be a number, got 'fast'"),
    ("negative temperature", lambda f: ["--recipe", B, "loss.terms.kd.temperature=-1"], "temperature must be > 0"),
    ("unknown model", lambda f: ["--recipe", B, "student.name=resnet9000"], "unknown model 'resnet9000'"),
    ("unknown loss", lambda f: ["--recipe", B, "loss.terms.foo={weight: 1.0}"], "unknown loss 'foo'"),
    ("unknown task", lambda f: ["--recipe", B, "task=foo"], "'task' must be a registered task, got 'foo'"),
    ("unknown optimizer", lambda f: ["--recipe", B, "optimizer.name=adam"], "did you mean 'adamw'"),
    ("unknown scheduler", lambda f: ["--recipe", B, "scheduler.name=linear"], "'scheduler.name' must be one of"),
    ("unknown strategy", lambda f: ["--recipe", B, "trainer.strategy=warp"], "'warp', which is no strategy (names:"),
    (
        "a misspelt strategy",
        lambda f: ["--recipe", B, "trainer.strategy=ddp_spwan"],
        "'trainer.strategy' is 'ddp_spwan', which is no strategy (did you mean 'ddp_spawn'?)",
    ),
    ("negative epochs", lambda f: ["--recipe", B, "trainer.max_epochs=-5"], "`max_epochs` must be"),
    ("reserved trainer key", lambda f: ["--recipe", B, "trainer.callbacks=[]"], "cannot be set in a recipe"),
    ("override not key=value", lambda f: ["--recipe", B, "seed"], "override 'seed' is not of the form key=value"),
    (
        "deleting a key the recipe does not set",
        lambda f: ["--recipe", B, "~no.such.key"],
        "'~no.such.key': the recipe does not set 'no.such.key', so there is nothing to delete: it has no 'no'",
    ),
    ("a deletion naming no key", lambda f: ["--recipe", B, "~"], "'~' names no key: write ~KEY to delete one"),
    ("a deletion with a value", lambda f: ["--recipe", B, "~seed=1"], "'~seed=1': a deletion takes no value"),
    (
        "null for a loss term the recipe does not have",
        lambda f: ["--recipe", B, "loss.terms.kdd=null"],
        "does not set 'loss.terms.kdd', so there is nothing to delete (did you mean 'kd'?)",
    ),
    ("unknown recipe name", lambda f: ["--recipe", "quickstart_digit"], "did you mean 'quickstart_digits'"),
    ("validation fraction out of range", lambda f: ["--recipe", B, "data.val_fraction=1.5"], "must be in (0, 1)"),
    ("zero batch size", lambda f: ["--recipe", B, "data.batch_size=0"], "data.batch_size must be >= 1"),
    ("missing student", lambda f: ["--recipe", recipe(f, "nostudent", student=None)], "'student' is required"),
    (
        "loss term without weight",
        lambda f: ["--recipe", recipe(f, "noweight", loss={"terms": {"kd": {}}})],
        "every loss term has an explicit weight",
    ),
    (
        "distillation without a teacher",
        lambda f: ["--recipe", recipe(f, "noteacher", teacher=None)],
        "'teacher' is missing",
    ),
    (
        "dpo objective in a classification recipe",
        lambda f: ["--recipe", B, "task=dpo"],
        "must be exactly one term: dpo",
    ),
    (
        "align_distil without its second model",
        lambda f: ["--recipe", "align_distil_tiny", "second_teacher=null"],
        "'second_teacher' is required by align_distil",
    ),
    (
        "teacher checkpoint missing",
        lambda f: ["--recipe", B, "teacher.checkpoint=/nope/teacher.pt"],
        "teacher.checkpoint: file not found: /nope/teacher.pt",
    ),
    (
        "teacher checkpoint of another architecture",
        lambda f: ["--recipe", B, "teacher.checkpoint=mlp.pt"],
        "is for another architecture: 16 missing keys",
    ),
    (
        "teacher with another class count",
        lambda f: ["--recipe", B, "teacher.checkpoint=teacher5.pt"],
        "has shape [5, 8] in the file but [10, 8] in the model",
    ),
    (
        "teacher checkpoint truncated",
        lambda f: ["--recipe", B, "teacher.checkpoint=truncated.pt"],
        "(truncated, corrupt or not a weights file)",
    ),
    (
        "teacher checkpoint that is junk",
        lambda f: ["--recipe", B, "teacher.checkpoint=junk.pt"],
        "(truncated, corrupt or not a weights file)",
    ),
    (
        "image folder missing",
        lambda f: ["--recipe", B, "data={name: imagefolder, root: /nope}"],
        "image folder /nope not found",
    ),
    (
        "image folder without classes",
        lambda f: ["--recipe", B, f"data={{name: imagefolder, root: {f / 'empty'}}}"],
        "has no class sub-folders",
    ),
    (
        "CIFAR-100 missing, downloads off",
        lambda f: ["--recipe", B, "data={name: cifar100, root: /nope}"],
        "CIFAR-100 (/nope/cifar-100-python): not found and downloads are off (DISTILL_OFFLINE=1): download "
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into /nope",
    ),
    (
        "CIFAR-100 missing, download false",
        lambda f: ["--recipe", B, "data={name: cifar100, root: /nope, download: false}"],
        "CIFAR-100 not found: expected /nope/cifar-100-python/{train,test}; set data.download=true",
    ),
    (
        "published teacher of a model with none",
        lambda f: ["--recipe", B, "teacher.checkpoint=published"],
        "teacher.checkpoint: no published convnet: mdistiller's cifar_teachers.tar holds resnet32x4,",
    ),
    (
        "teacher by URL, downloads off",
        lambda f: ["--recipe", B, "teacher.checkpoint=https://example.invalid/t.pth", "teacher.store=store_bad"],
        "teacher.checkpoint: https://example.invalid/t.pth: not found and downloads are off (DISTILL_OFFLINE=1): "
        "download https://example.invalid/t.pth to ",
    ),
    (
        "checksum of a teacher file that is no URL",
        lambda f: ["--recipe", B, "teacher.checkpoint_sha256=" + "a" * 64],
        "'teacher.checkpoint_sha256' checks a checkpoint given by URL (https://...) only",
    ),
    (
        "checksum that is no sha256",
        lambda f: ["--recipe", B, "teacher.checkpoint=https://example.invalid/t.pth", "teacher.checkpoint_sha256=abc"],
        "'teacher.checkpoint_sha256' must be 64 hexadecimal digits (a sha256)",
    ),
    (
        "label out of range",
        lambda f: ["--recipe", B, f"data={{name: cifar100, root: {cifar_with_label(f, 150)}}}"],
        "fine_labels must be integers in [0, 100)",
    ),
    (
        "NaN in the data",
        lambda f: ["--recipe", "dpo_tiny", f"data.source={jsonl(f, 'nan.jsonl', NAN_LINES)}"],
        "not a string: prompt (float)",
    ),
    ("more shots than a class has", lambda f: ["--recipe", B, "data.shots=500"], "fewer than 500"),
    (
        "teacher cache without replayable views",
        lambda f: ["--recipe", B, "teacher.cache=cache"],
        "teacher.cache needs data whose views are replayable",
    ),
    ("unwritable run folder", lambda f: ["--recipe", B, "run.root=/proc/forbidden"], "cannot create run folder"),
    ("resume of nothing", lambda f: ["--resume", str(f / "nowhere")], "has no checkpoint to resume from"),
    (
        "a YAML tag that builds a Python object",
        lambda f: ["--recipe", text(f, "tag", PYTHON_TAG)],
        "could not determine a constructor for the tag",
    ),
    (
        "remote code without --allow-remote-code",
        lambda f: ["--recipe", B, "student={name: 'hf:someone/model', trust_remote_code: true}"],
        "trust_remote_code runs Python code from the model's repository; pass --allow-remote-code",
    ),
    (
        "a strategy that forks the process",  # the notebook launcher: a forked rank hangs under the command line
        lambda f: ["--recipe", B, "trainer.strategy=ddp_fork", "trainer.devices=2"],
        "'trainer.strategy' is 'ddp_fork', which forks the running process into ranks, and a forked rank hangs: use",
    ),
    (
        "deepspeed without a GPU",
        lambda f: ["--recipe", B, "trainer.strategy=deepspeed_stage_2"],
        "on CUDA GPUs only, and the accelerator is cpu; use ddp or fsdp"
        if importlib.util.find_spec("deepspeed")
        else "needs the deepspeed package (pip install 'distill[deepspeed]'); or use fsdp",
    ),
    (
        "an XLA strategy without torch_xla",
        lambda f: ["--recipe", B, "trainer.strategy=xla"],
        "'trainer.strategy' is 'xla', which needs torch_xla and a TPU (not installed here): use auto, ddp or fsdp",
    ),
    ("unknown fsdp placement", lambda f: ["--recipe", B, "fsdp.frozen=half"], "'fsdp.frozen' must be one of"),
    (
        "torchrun without a run id",
        lambda f: ["--recipe", B, "trainer.strategy=ddp"],
        "torchrun: give the run an id",
    ),
    ("seed below 0", lambda f: ["--recipe", "quickstart_digits", "seed=-5"], "'seed' must be in [0, 4294967295]"),
    ("seed above 2^32 - 1", lambda f: ["--recipe", B, "seed=4294967296"], "'seed' must be in [0, 4294967295]"),
    (
        "class-logit term in a language-model recipe",
        lambda f: ["--recipe", "llm_kd_tiny", "loss.terms={kd: {weight: 1.0}}"],
        "'loss.terms.kd' is kd, which consumes class logits with labels; task causal_lm feeds",
    ),
    (
        "token term in a classification recipe",
        lambda f: ["--recipe", B, "loss.terms={token_kl: {weight: 1.0}}"],
        "(terms that fit: at, crd, dkd, fitnet, kd, pkt, pld, reviewkd, rkd, sp, zscore_kd)",
    ),
    (
        "a task's objective as a term of another task",
        lambda f: ["--recipe", B, "loss.terms.extra={loss: dpo, weight: 1.0}"],
        "'loss.terms.extra' is dpo, the objective of task: dpo",
    ),
    (
        "a second frozen model the task does not read",
        lambda f: ["--recipe", B, "second_teacher={model: {name: convnet}, checkpoint: teacher.pt}"],
        "'second_teacher' is not read by task classification",
    ),
    (
        "the section of another task",
        lambda f: ["--recipe", B, "speculative.depth=3"],
        "'speculative' is the section of task draft_distill; this recipe's task is classification",
    ),
    (
        "a token term across tokenizers",
        lambda f: ["--recipe", "gld_tiny", "loss.terms.token_kl={weight: 1.0}"],
        "'loss.terms.token_kl' compares teacher and student token by token",
    ),
    (
        "an LM head chunk of no tokens",
        lambda f: ["--recipe", "llm_kd_tiny", "causal_lm.chunk_size=0"],
        "causal_lm.chunk_size must be >= 1, got 0",
    ),
    (
        "two chunk sizes for one chunk loop",
        lambda f: ["--recipe", "llm_kd_tiny", "loss.terms.token_kl.chunk_size=9", "causal_lm.chunk_size=5"],
        "'loss.terms.token_kl.chunk_size' differs: task causal_lm runs CE and every token term in one chunk loop",
    ),
    (
        "an unknown way to compute LM logits",
        lambda f: ["--recipe", "llm_kd_tiny", "causal_lm.logits=fast"],
        "'causal_lm.logits' must be one of 'auto', 'chunked', 'full', got 'fast'",
    ),
    (
        "a Hub dataset offline",
        lambda f: ["--recipe", "llm_kd_tiny", "data.source=hf:nobody/no_such_dataset"],
        "data.source 'hf:nobody/no_such_dataset': the Hugging Face Hub cannot be reached from here (offline)",
    ),
    (
        "a dataset without the columns read",
        lambda f: ["--recipe", "llm_kd_tiny", f"data.source={parquet(f, 'questions.parquet', question=['a', 'b'])}"],
        "no column messages or prompt+response or text; it has ['question'] (map names with data.columns",
    ),
    (
        "a .parquet file that is not parquet",
        lambda f: ["--recipe", "llm_kd_tiny", f"data.source={junk(f, 'notes.parquet')}"],
        "notes.parquet is not a parquet file (Parquet magic bytes not found in footer.",
    ),
    (
        "a save_to_disk folder that is not one",
        lambda f: ["--recipe", "dpo_tiny", f"data.source={broken_saved_dataset(f)}"],
        "saved_bad' is not a readable save_to_disk folder (",
    ),
    (
        "a column map beside a plain text file",
        lambda f: ["--recipe", "llm_kd_tiny", f"data.source={txt(f, 'plain.txt')}", "data.columns={text: body}"],
        "data.columns applies to Hugging Face datasets sources and JSONL files; data.source",
    ),
    (
        "a split name beside a JSONL file",
        lambda f: [
            "--recipe",
            "llm_kd_tiny",
            f"data.source={jsonl(f, 'plain.jsonl', PLAIN_LINES)}",
            "data.val_split=test",
        ],
        "data.val_split names a split or revision of a Hugging Face datasets source",
    ),
    (
        "a validation file beside the source's validation split",
        lambda f: [
            "--recipe",
            "chat_kd_qwen2.5_1.5b_to_0.5b",
            f"data.validation={jsonl(f, 'val_chats.jsonl', CHAT_LINES[:1])}",
        ],
        "data.validation and data.source.val_split both say what to validate on; keep one",
    ),
    (
        "a mistyped key of a source mapping",
        lambda f: ["--recipe", "chat_kd_qwen2.5_1.5b_to_0.5b", "data.source.splt=train"],
        "data.source: unknown key 'splt' (did you mean 'split'?)",
    ),
    (
        "a validation file that does not exist",
        lambda f: ["--recipe", "llm_kd_tiny", "data.validation=/nope/val.jsonl"],
        "data.validation: no such file or folder '/nope/val.jsonl'",
    ),
    (
        "a message part that is not text",
        lambda f: [
            "--recipe",
            "llm_kd_tiny",
            f"data.source={jsonl(f, 'image_chat.jsonl', IMAGE_CHAT_LINES)}",
            "data.chat_template=chatml",
        ],
        "image_chat.jsonl:2: message 0: content part 1 is 'image_url', not text",
    ),
    (
        "packed conversations sampled on-policy",
        lambda f: ["--recipe", "gkd_tiny", "data.packing=true"],
        "causal_lm.mode mixed samples one answer per row, and data.packing puts several conversations in a row",
    ),
    ("an unknown padding", lambda f: ["--recipe", "chat_kd_tiny", "data.padding=dynamic"], "'data.padding' must be"),
    (
        "padding to a multiple of 0",
        lambda f: ["--recipe", "chat_kd_tiny", "data.pad_to_multiple_of=0"],
        "data.pad_to_multiple_of must be >= 1, got 0",
    ),
    (
        "a conversation without an assistant turn",
        lambda f: [
            "--recipe",
            "llm_kd_tiny",
            f"data.source={jsonl(f, 'chat.jsonl', CHAT_LINES)}",
            "data.chat_template=chatml",
        ],
        "chat.jsonl:2: the conversation has no assistant turn to train on",
    ),
    (
        "a LoRA target the model does not have",
        lambda f: ["--recipe", "llm_kd_tiny", "student.lora={target_modules: [q_proj, gate_prj]}"],
        "student.lora.target_modules: the model has no layer named 'gate_prj' (did you mean 'gate_proj'?)",
    ),
    (
        "an 8-bit teacher where it cannot run",
        lambda f: ["--recipe", "llm_kd_tiny", "teacher.dtype=int8", "teacher.model={name: hf:./tiny-llama}"],
        "teacher.dtype: int8 needs a CUDA GPU (bitsandbytes' 8-bit kernels) and this run has none; use bfloat16",
    ),
    (
        "a feature term naming a layer the student does not have",
        lambda f: ["--recipe", B, "loss.terms.fitnet={weight: 1.0, student: featurs.6, teacher: features.6}"],
        "loss.terms.fitnet.student: ConvNet has no layer 'featurs.6' (did you mean 'features.6'?)",
    ),
    (
        "a feature term whose shapes cannot be matched",
        lambda f: ["--recipe", B, "loss.terms.fitnet={weight: 1.0, student: head.1, teacher: features.2}"],
        "loss.terms.fitnet: student head.1 (8,) cannot be mapped to teacher features.2 (4, 8, 8): the ranks differ",
    ),
    (
        "a feature term pairing unequal lists of layers",
        lambda f: [
            "--recipe",
            B,
            "loss.terms.at={weight: 1.0, student: [features.2, features.6], teacher: features.6}",
        ],
        "student names 2, teacher 1; give both the same number",
    ),
    (
        "a hidden-state index on a model that has none",
        lambda f: ["--recipe", B, "loss.terms.sp={weight: 1.0, student: 2, teacher: features.6}"],
        "layer 2 is a hidden-state index, which only Hugging Face language models have",
    ),
    (
        "a feature term beside the teacher cache",
        lambda f: [
            "--recipe",
            B,
            "teacher.cache=cache_bad",
            "loss.terms.sp={weight: 1.0, student: features.6, teacher: features.6}",
        ],
        "which teacher.cache does not store",
    ),
    (
        "teacher cache in a task whose teacher runs every batch",
        lambda f: ["--recipe", "align_distil_tiny", "teacher.cache=cache"],
        "'teacher.cache' is not read by task align_distil",
    ),
]
# environment of a case, as its launcher would set it
CASE_ENV = {
    "torchrun without a run id": {"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "none"},
    "a Hub dataset offline": {"HF_HUB_OFFLINE": "1"},  # the same answer with or without a network here
}
CHAT_LINES = [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
    '{"messages": [{"role": "user", "content": "hi"}]}',
]
PLAIN_LINES = ['{"text": "a b c"}'] * 3
IMAGE_CHAT_LINES = [
    CHAT_LINES[0],
    '{"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, '
    '{"type": "image_url", "image_url": {"url": "x.png"}}]}, {"role": "assistant", "content": "a cat"}]}',
]
NAN_LINES = ['{"prompt": NaN, "chosen": "a", "rejected": "b"}']
PYTHON_TAG = "seed: !!python/object/apply:os.system ['touch pwned']\ndata: {name: digits}\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    teacher = create_model("convnet", num_classes=10, in_chans=1, widths=[4, 8], hidden=8)
    torch.save({"model": teacher.state_dict()}, folder / "teacher.pt")
    torch.save(
        {"model": create_model("convnet", num_classes=5, in_chans=1, widths=[4, 8], hidden=8).state_dict()},
        folder / "teacher5.pt",
    )
    torch.save({"model": create_model("mlp", num_classes=10).state_dict()}, folder / "mlp.pt")
    (folder / "truncated.pt").write_bytes((folder / "teacher.pt").read_bytes()[:300])
    (folder / "junk.pt").write_bytes(b"not a checkpoint at all")
    (folder / "empty" / "train").mkdir(parents=True)
    (folder / "empty" / "val").mkdir()
    (folder / "BASE.yaml").write_text(yaml.safe_dump(BASE))
    # a run that exists before: no bad input may touch it
    (folder / "runs" / "bad" / "version_0").mkdir(parents=True)
    (folder / "runs" / "bad" / "version_0" / "results.json").write_text(json.dumps({"kept": True}))
    return folder


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_it(name, make, expected, folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    for key, value in CASE_ENV.get(name, {}).items():
        monkeypatch.setenv(key, value)
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "cache_bad" not in str(p))
    args = [str(folder / "BASE.yaml") if a == B else a for a in make(folder)]
    assert main(["fit", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill: error: "), lines
    assert expected in lines[0]
    assert "Traceback" not in lines[0]
    # nothing that existed is gone or changed; no run folder is left behind
    assert (folder / "runs" / "bad" / "version_0" / "results.json").read_text() == '{"kept": true}'
    assert not (folder / "runs" / "bad" / "version_1").exists()
    assert not (folder / "pwned").exists()
    after = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    assert set(before) <= after


def test_a_refusal_after_the_trainer_is_built_prints_one_line_only(folder):
    # in a real process Lightning's device lines would come first: they are held back until the inputs are checked
    distill = str(Path(sys.executable).parent / "distill")
    args = ["--recipe", str(folder / "BASE.yaml"), "teacher.checkpoint=/nope/teacher.pt"]
    done = subprocess.run([distill, "fit", *args], capture_output=True, text=True, cwd=folder, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["distill: error: teacher.checkpoint: file not found: /nope/teacher.pt"]
