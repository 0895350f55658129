"""`python -m tnsearch.profile` and `python -m tnsearch.compress` on the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import tnsearch
from tests.helpers import FAST, val_accuracy
from tnsearch import tn
from tnsearch.budget.profile import Profile
from tnsearch.data import DigitsDataModule
from tnsearch.plan import build_dense

BASE = ["study=mlp", "data=digits", "pretrain.epochs=2", "space.orders=[1,2]",
        "space.ranks=[2,8]", "space.topologies=[mpo,tucker]", "profile.steps=5",
        "decompose.steps=10", "tracking.enabled=false", *FAST]  # fmt: skip


def run(module: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    args = [f"root={root}", "budget.params=0.3", "heal.epochs=1", "heal.layers=tensorized"]
    done = run("tnsearch.compress", [*args, *BASE], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done.stdout


@pytest.mark.slow
def test_compress_writes_a_package_that_loads_with_the_printed_quality(compressed):
    root, out = compressed
    folder = root / "mlp" / "compress" / "params-0.3"
    model = tnsearch.load(folder)
    printed = re.search(r"\| accuracy \(validation\) \| ([\d.]+) \| ([\d.]+) \|", out)
    assert printed, out
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("validate")
    assert val_accuracy(model, dm) == pytest.approx(float(printed[2]), abs=1e-4)
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["layers"] and plan["params"] <= 0.3 * tn.n_params(build_dense(plan))
    assert plan["params"] == tn.n_params(model)  # healed with the dense layers held, all counted
    assert (
        "| parameters |" in out
        and "compressed to budget.params=0.3" in (folder / "README.md").read_text()
    )


@pytest.mark.slow
def test_compress_to_a_byte_budget_chooses_int8_and_writes_the_int8_model(tmp_path):
    """`budget.bytes` with int8 in the space: the allocation puts layers in int8, and the
    package is the int8 model whose quality and bytes the command printed."""
    done = run(
        "tnsearch.compress",
        [f"root={tmp_path}", "budget.bytes=0.1", "space.precisions=[fp32,int8]", *BASE],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "mlp" / "compress" / "bytes-0.1"
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["precision"] and set(plan["precision"].values()) == {"int8"}
    row = r"\| weights \(bytes\) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+)x \|"
    printed = re.search(row, done.stdout)
    assert printed and float(printed[3]) <= 0.1, done.stdout
    model = tnsearch.load(folder)  # the int8 model, as deployed
    from tnsearch.measure import quantize

    layers = [n for n, m in model.named_modules() if n in plan["precision"]]
    assert layers and quantize.weight_bytes(build_dense(plan)) == int(printed[1].replace(",", ""))
    quality = re.search(r"\| accuracy \(validation\) \| ([\d.]+) \| ([\d.]+) \|", done.stdout)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("validate")
    assert val_accuracy(model, dm) == pytest.approx(float(quality[2]), abs=1e-4)
    assert "Layers whose weights are int8" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_the_profile_is_reused(compressed):
    root, _ = compressed
    cached = list((root / "mlp" / "profile").glob("*.json"))
    assert len(cached) == 1
    again = run("tnsearch.profile", [f"root={root}", *BASE], root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "profiling" not in again.stdout  # read back, not measured again
    assert "| fc1 |" in again.stdout
    assert list((root / "mlp" / "profile").glob("*.json")) == cached
    # every measured option carries its bond quantities; a larger rank leaves out less
    found = Profile.load(cached[0])
    assert found.measured and all(  # the measured options (the others are predicted)
        {"discarded", "discarded_white", "entropy"} <= set(e.bonds) for e in found.measured
    )
    for e in found.measured:
        for other in found.measured:
            same = (other.group, other.topology, other.order) == (e.group, e.topology, e.order)
            if same and other.rank > e.rank:
                assert other.bonds["discarded"] <= e.bonds["discarded"] + 1e-12


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["budget.params=1.5"], r"budget\.params: must be a fraction in \(0, 1\], got 1\.5"),
        ([], r"budget\.params: give budget\.params=FRACTION, budget\.latency=FRACTION and/or budget\.bytes=FRACTION"),  # noqa: E501
        (["budget.bytes=0"], r"budget\.bytes: must be a fraction in \(0, 1\], got 0"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, expected):
    done = run("tnsearch.compress", [f"root={tmp_path}", *BASE, *args], tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), done.stderr
    assert not (tmp_path / "mlp").exists()


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        (["budget.params=0.0001"], "budget.params", r"no plan meets 0\.0001; the smallest reachable is 0\.0\d+"),  # noqa: E501
        (["budget.bytes=0.01"], "budget.bytes", r"no plan meets 0\.01; the smallest reachable is 0\.0\d+ \(widen space\.ranks, space\.orders, space\.precisions"),  # noqa: E501
        (["budget.bytes=0.02", "space.precisions=[fp32,int8]"], "budget.bytes", r"no plan meets 0\.02; the smallest reachable is 0\.0[2-9]"),  # noqa: E501
        (["budget.params=0.5", "pretrain.epochs=0"], "model.checkpoint", r"needs trained weights"),
        (["budget.params=0.5", "decompose.calibration=0"], "decompose.calibration", r"must be a number of examples >= 1"),  # noqa: E501
    ],
)  # fmt: skip
def test_what_only_the_model_and_data_reveal_stops_before_anything_is_written(
    tmp_path, args, key, expected
):
    """The checks that need the model and the data (the same code the command runs; the two
    cases above show the command's one line and exit code)."""
    from tests.helpers import compose_cfg
    from tnsearch.cli import resolve
    from tnsearch.compress import compress
    from tnsearch.config import ConfigError

    cfg = resolve(compose_cfg([f"root={tmp_path}", *BASE, *args]))
    with pytest.raises(ConfigError) as found:
        compress(cfg)
    assert found.value.key == key and re.search(expected, str(found.value)), str(found.value)
    assert not (tmp_path / "mlp").exists()


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        (["budget.params=0.5", "heal.epochs=abc"], "heal.epochs", r"must be an int >= 0"),
        (["budget.params=0.5", "compress.out=FILE/package"], "compress.out", r"is a file"),
    ],
)  # fmt: skip
def test_heal_epochs_and_an_out_folder_under_a_file_stop_first(tmp_path, args, key, expected):
    from tests.helpers import compose_cfg
    from tnsearch.cli import resolve
    from tnsearch.compress import compress
    from tnsearch.config import ConfigError

    (tmp_path / "FILE").write_text("a regular file")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    with pytest.raises(ConfigError) as found:  # heal.epochs: as the config is loaded
        compress(resolve(compose_cfg([f"root={tmp_path}", *BASE, *args])))
    assert found.value.key == key and re.search(expected, str(found.value)), str(found.value)
    assert not (tmp_path / "mlp").exists()


@pytest.mark.slow
def test_compress_logs_its_model_to_mlflow_and_says_where_to_look(tmp_path, capsys):
    import mlflow

    from tests.helpers import compose_cfg
    from tnsearch.cli import resolve
    from tnsearch.compress import compress

    args = [a for a in BASE if a != "tracking.enabled=false"]
    out = compress(resolve(compose_cfg([f"root={tmp_path}", "budget.params=0.3", *args])))
    printed = capsys.readouterr().out
    assert "MLflow model: models:/" in printed and "\nNext:\n  mlflow ui" in printed
    assert f'tnsearch.load("{out}")' in printed
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`tnsearch.role` = 'compress'",
    )
    assert run.data.tags["mlflow.note.content"].startswith("# mlp, compressed to budget.params=0.3")
    assert run.data.metrics["compression"] == round(run.data.metrics["compression"], 2)
    model = mlflow.pyfunc.load_model(printed.split("MLflow model: ")[1].split()[0])
    assert model.metadata.signature is not None
