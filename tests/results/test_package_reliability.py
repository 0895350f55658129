"""Packages and Hugging Face folders as a careless user or an attacker leaves them (issue 23's
items 3, 4, 5, 6, 8 and 9 on packages, issue 22's bad input): each is refused with one line
naming the file, or cleaned up; never a model with random, partial or changed weights."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import tnsearch
from tnsearch.config import ConfigError
from tnsearch.results.package import PackageError, write_checksums


@pytest.fixture
def package(digits, tmp_path):
    """A copy of the digits package, to damage."""
    return shutil.copytree(digits.out, tmp_path / "pkg")


def _one_line(exc: BaseException, folder, name: str, words: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert text.startswith(f"{folder / name}: "), text
    assert words in text, text
    return text


def test_changed_weights_are_refused_naming_the_file(package, digits):
    x, _ = digits.data.tensors("val")
    with torch.no_grad():
        expected = tnsearch.load(package)(x)
    weights = package / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1000] = bytes(b ^ 0x5A for b in data[middle : middle + 1000])
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError) as info:
        tnsearch.load(package)
    _one_line(info.value, package, "model.safetensors", "changed since it was written")
    assert isinstance(info.value, ConfigError)  # a command prints it and exits 2
    with torch.no_grad():  # verify=False: the user's call, and indeed another model
        assert not torch.equal(tnsearch.load(package, verify=False)(x), expected)


@pytest.mark.parametrize("name", ["plan.json", "preprocessing.json", "model.onnx"])
def test_a_missing_file_is_named(package, name):
    (package / name).unlink()
    with pytest.raises((PackageError, FileNotFoundError)) as info:
        tnsearch.load(package)
    if name == "plan.json":
        assert str(info.value) == f"{package}: not an exported model (no plan.json)"
    else:
        _one_line(info.value, package, name, "missing (checksums.json lists it)")


def _save_weights(package, state) -> None:
    from safetensors.torch import save_file

    save_file(state, package / "model.safetensors")
    write_checksums(package)  # as an attacker would: the checksums agree


def test_weights_of_another_shape_or_partial_weights_are_refused(package):
    from safetensors.torch import load_file

    state = load_file(package / "model.safetensors")
    _save_weights(package, {**state, "fc2.weight": torch.zeros(10, 31)})
    with pytest.raises(PackageError) as info:
        tnsearch.load(package)
    _one_line(
        info.value,
        package,
        "model.safetensors",
        "does not match plan.json: 1 of another shape (fc2.weight: stored [10, 31], the plan "
        "builds [10, 32])",
    )
    del state["fc2.bias"]
    _save_weights(package, state)
    with pytest.raises(PackageError) as info:
        tnsearch.load(package)
    _one_line(info.value, package, "model.safetensors", "the plan builds not stored (fc2.bias)")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1, 2]", "a JSON list, not a plan (a JSON object)"),
        ('{"version": 1, "model": ', "not JSON (Expecting value: line 1 column 25"),
        (
            '{"version": 1, "model": {}, "inputs": {}}',
            "'layers' must be a JSON object, got missing",
        ),
        (
            "missing layer",
            "does not build a model (plan.layers: 'fc9' is not a layer of the model)",
        ),
    ],
)
def test_a_plan_that_is_no_plan_is_one_line(package, text, words):
    if text == "missing layer":
        plan = json.loads((package / "plan.json").read_text())
        plan["layers"]["fc9"] = plan["layers"]["fc1"]
        text = json.dumps(plan)
    (package / "plan.json").write_text(text)
    with pytest.raises(PackageError) as info:
        tnsearch.load(package)  # the checksums tell first
    _one_line(info.value, package, "plan.json", "changed since it was written")
    with pytest.raises(PackageError) as info:
        tnsearch.load(package, verify=False)
    _one_line(info.value, package, "plan.json", words)


def test_plan_arguments_cannot_make_load_allocate_without_bounds(package):
    """`hidden=[3000000, 100000]` asks for 1.2 TB: the model is built on the meta device and
    compared with the weights file's header before anything is allocated."""
    plan = json.loads((package / "plan.json").read_text())
    plan["model"]["hidden"] = [3_000_000, 100_000]
    plan["layers"] = {}
    (package / "plan.json").write_text(json.dumps(plan))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    started = time.monotonic()
    with pytest.raises(PackageError) as info:
        tnsearch.load(package, verify=False)
    assert time.monotonic() - started < 10
    _one_line(info.value, package, "model.safetensors", "does not match plan.json: ")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024


def _run_export(args, monkeypatch):
    from tnsearch import export as export_cli

    monkeypatch.setattr(sys, "argv", ["tnsearch.export", *args])
    export_cli.main()


def test_export_out_under_a_regular_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "pkg"
    with pytest.raises(SystemExit) as info:  # no study 'nope' either: out is checked first
        _run_export([f"root={tmp_path}", "name=nope", f"out={out}"], monkeypatch)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: out: {tmp_path / 'file'} is a file, not a folder: {out} cannot be made\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_killed_writers_temporary_folder_is_removed_by_the_next(digits, tmp_path):
    from tnsearch.results.export import write_package
    from tnsearch.study.record import Record

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that no longer exists
    stale = tmp_path / f".pkg.partial-{gone.pid}-abc123"
    (stale / "hf").mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".pkg.partial-{os.getpid()}-xyz789"  # a writer still at work
    live.mkdir()
    plan = json.loads((digits.out / "plan.json").read_text())
    trial = Record(number=1, plan=plan, quality=0.5, params=1000)
    write_package(trial, digits.root / "weights.pt", tmp_path / "pkg", study_name="d", timed=False)
    assert not stale.exists() and live.is_dir()
    assert tnsearch.load(tmp_path / "pkg") is not None


@pytest.mark.slow
def test_a_killed_export_leaves_no_temporary_folder_after_the_next(tiny_study, tmp_path):
    """SIGKILL of `python -m tnsearch.export` while it writes, then the same command again."""
    out = tmp_path / "pkg"
    args = [sys.executable, "-m", "tnsearch.export", *tiny_study.overrides, f"out={out}"]
    args.append("tracking.enabled=false")
    export = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".pkg.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    export.send_signal(signal.SIGKILL)
    export.wait()
    assert list(tmp_path.glob(".pkg.partial-*")), "the export ended before it could be killed"
    assert not out.exists()
    again = subprocess.run(args, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(tmp_path.glob(".pkg.partial-*"))
    assert tnsearch.load(out) is not None


# ---- Hugging Face folders that would run their own code -----------------------------------


@pytest.fixture
def coded_folder(tmp_path):
    """A Hugging Face folder whose config names its own code, and the code, which leaves a
    marker when it runs."""
    pytest.importorskip("transformers")
    from tests.helpers import bert_tokenizer

    folder = bert_tokenizer(tmp_path / "src", ["a few words here"])
    config = {
        "model_type": "bert",
        "auto_map": {"AutoConfig": "modeling.Config", "AutoModel": "modeling.Model"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "RAN"
    (folder / "modeling.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_a_folder_with_code_of_its_own_is_refused_before_it_is_read(coded_folder):
    from tnsearch import hf
    from tnsearch.data import TextDataModule
    from tnsearch.models import from_pretrained

    folder, marker = coded_folder
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^model\.path: .*auto_map"):
        TextDataModule(tokenizer=str(folder), model_path=str(folder)).check()
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: .*auto_map"):
        TextDataModule(tokenizer=str(folder)).check()
    with pytest.raises(ValueError, match=r"^model\.path: .*auto_map"):
        from_pretrained(str(folder))
    for read in (hf.config, hf.tokenizer):
        with pytest.raises(ValueError, match="auto_map"):
            read(folder, "model.path")
    # a model type transformers does not ship, or a tokenizer class of the folder's own
    (folder / "config.json").write_text(json.dumps({"model_type": "mine"}))
    with pytest.raises(ValueError, match="model_type 'mine', which transformers does not ship"):
        hf.tokenizer(folder, "data.tokenizer")
    (folder / "config.json").unlink()
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "MyTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="tokenizer_class 'MyTokenizer'"):
        hf.tokenizer(folder, "data.tokenizer")
    assert not marker.exists()


@pytest.mark.slow
def test_the_command_refuses_such_a_folder_without_a_prompt(coded_folder, tmp_path):
    from tests.helpers import run_cli

    folder, marker = coded_folder
    (folder / "model.safetensors").write_bytes(b"")
    done = run_cli(
        [f"root={tmp_path}/r", "model=hf", f"model.path={folder}", "data=text", "task=distill"],
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: model.path: {folder}: its config.json has an auto_map")
    assert "[y/N]" not in done.stdout + done.stderr and not marker.exists()
    assert not (tmp_path / "r").exists()


def test_an_empty_model_folder_is_blamed_on_model_path(tmp_path):
    from tests.helpers import compose_cfg
    from tnsearch.cli import resolve
    from tnsearch.study.setup import prepare

    (tmp_path / "empty").mkdir()
    cfg = resolve(
        compose_cfg([f"root={tmp_path}/r", "model=hf", f"model.path={tmp_path}/empty", "data=text"])
    )
    with pytest.raises(ConfigError) as info:
        prepare(cfg)
    assert info.value.key == "model.path", str(info.value)


# ---- a text package's Hugging Face files --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "name", "words"),
    [
        ("delete", "hf/config.json", "missing (checksums.json lists it)"),
        ("delete", "hf/tokenizer.json", "missing (checksums.json lists it)"),
        ("auto_map", "hf/config.json", "its config.json has an auto_map"),
        ("vocab", "plan.json", "does not build a model with hf/config.json"),
        ("positions", "model.safetensors", "embeddings.position_embeddings.weight: stored [32"),
    ],
)
def test_a_damaged_hf_package_is_refused_naming_the_file(bert, tmp_path, change, name, words):
    package = shutil.copytree(bert.out, tmp_path / "pkg")
    config = package / "hf" / "config.json"
    settings = json.loads(config.read_text())
    if change == "delete":
        (package / name).unlink()
    elif change == "auto_map":
        config.write_text(json.dumps({**settings, "auto_map": {"AutoModel": "x.Model"}}))
    elif change == "vocab":
        config.write_text(json.dumps({**settings, "vocab_size": 10**9}))
    else:  # 10**10 positions: 1.3 TB, on the meta device only
        config.write_text(json.dumps({**settings, "max_position_embeddings": 10**10}))
    with pytest.raises(PackageError) as info:
        tnsearch.load(package, verify=change == "delete")
    _one_line(info.value, package, name, words)
