"""The export package: one trained model in a folder that needs neither the study nor the
machine that made it (written by `python -m tnsearch.export`, `tnsearch.compress` and a
tensorized model's ``save_pretrained``; read by `tnsearch.results.package_load.load`, which is
`tnsearch.load`).

- ``model.safetensors``: the weights, the state_dict of ``tnsearch.plan.build(plan)``;
- ``plan.json``: how to rebuild the model; a Hugging Face model's folder is the package's own
  ``hf/`` (never a path of the machine that made it);
- ``preprocessing.json``: what the model was trained on, as plain data: for images the input
  shape, the raw pixels' range and the normalization (mean, std per channel); for text the
  tokenizer's outputs it takes, ``max_length`` and the pad token, and what its output is
  (``last_hidden_state``, mean-pooled into an embedding, or ``logits``);
- ``hf/``: a Hugging Face model's ``config.json`` and, for a text model, the tokenizer's files;
  no weights, so ``AutoModel.from_pretrained`` cannot take the folder for a dense model with
  random layers;
- ``model.onnx``, ``README.md`` (`tnsearch.results.package_onnx`, `package_readme`);
- ``checksums.json``: the sha256 of every other file, written last.

A package is written into a temporary folder beside its destination (`staging`), which replaces
the destination's files when it is complete (the checksums last); a folder a killed writer left
behind is removed by the next.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from tnsearch.config import ConfigError
from tnsearch.ui import warn

__all__ = [
    "CHECKSUMS",
    "FILES",
    "HF",
    "HF_TARGET",
    "PackageError",
    "check_out",
    "factory_of",
    "portable_plan",
    "raw_model",
    "read_plan",
    "read_preprocessing",
    "staging",
    "verify_checksums",
    "write_checksums",
]

#: The manifest of a package's files (sha256), written last.
CHECKSUMS = "checksums.json"
#: The package's Hugging Face folder (config.json, tokenizer files; no weights).
HF = "hf"
#: A package's files, besides `hf/` (a Hugging Face or text model's config and tokenizer).
FILES = (
    "model.safetensors",
    "plan.json",
    "preprocessing.json",
    "model.onnx",
    "README.md",
    CHECKSUMS,
)
#: The plan constructor of a Hugging Face model (its folder: `hf/` in a package).
HF_TARGET = "tnsearch.models.from_pretrained"


class PackageError(ConfigError):
    """A package file that is missing, changed or wrong: ``<folder>/<file>: <reason>``."""

    def __init__(self, folder: Path, name: str, reason: str) -> None:
        super().__init__(str(Path(folder) / name), reason)
        self.file = name


# ---- checksums ----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(functools.partial(handle.read, 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    """The package's files, relative, sorted (the checksums file itself left out)."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != CHECKSUMS
    )


def write_checksums(folder: str | Path) -> Path:
    """Write ``checksums.json``: the sha256 of every file of the folder (call it last)."""
    from tnsearch.files import write_text

    folder = Path(folder)
    sums = {name: _sha256(folder / name) for name in _files(folder)}
    return write_text(folder / CHECKSUMS, json.dumps({"sha256": sums}, indent=2) + "\n")


def verify_checksums(folder: str | Path, *, needed: Collection[str] = ()) -> set[str] | None:
    """Check the folder's files against its ``checksums.json``; return the files it lists (None
    when it has none: an older package, said once, nothing checked).

    Args:
        needed: files the caller reads: each must be listed.

    Raises:
        PackageError: a listed file missing or changed, a needed file not listed, a manifest
            that is not one.
    """
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.is_file():
        warn(f"{folder}: no {CHECKSUMS} (an older export): its files were not verified")
        return None
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))["sha256"]
        if not isinstance(sums, dict):
            raise TypeError
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise PackageError(folder, CHECKSUMS, "not a checksums file (export again)") from None
    for name in needed:
        if name not in sums:
            raise PackageError(folder, CHECKSUMS, f"does not list {name}")
    for name, expected in sums.items():
        file = folder / name
        if not _inside(folder, file):
            raise PackageError(folder, CHECKSUMS, f"lists {name!r}, outside the package")
        if not file.is_file():
            raise PackageError(folder, name, f"missing ({CHECKSUMS} lists it)")
        if _sha256(file) != expected:
            raise PackageError(
                folder,
                name,
                f"changed since it was written (its sha256 is not the one {CHECKSUMS} gives); "
                "export the model again, or pass verify=False to load it as it is",
            )
    return set(sums)


def _inside(folder: Path, file: Path) -> bool:
    try:
        file.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# ---- plans and preprocessing ----------------------------------------------------------------


def portable_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The plan as a package stores it: a Hugging Face model's folder is the package's ``hf/``."""
    plan = json.loads(json.dumps(plan))  # a deep, JSON-able copy
    if plan["model"].get("_target_") == HF_TARGET:
        plan["model"]["path"] = HF
    return plan


def read_plan(folder: Path) -> dict[str, Any]:
    """The package's plan.json, checked, as its JSON object (what the package's files hold)."""
    from tnsearch import plan as plans

    try:
        return plans.load(folder / "plan.json").to_json()
    except plans.PlanFileError as exc:
        raise PackageError(folder, "plan.json", exc.reason) from None


def read_preprocessing(folder: str | Path) -> dict[str, Any]:
    """The package's ``preprocessing.json`` (``{"kind": "none"}`` for an older package)."""
    folder = Path(folder)
    path = folder / "preprocessing.json"
    if not path.is_file():
        return {"kind": "none"}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(folder, "preprocessing.json", f"not JSON ({exc})") from None
    if not isinstance(found, dict) or not isinstance(found.get("kind"), str):
        raise PackageError(folder, "preprocessing.json", 'must be a JSON object with a "kind"')
    return found


def _hf_folder(folder: Path, plan: Mapping[str, Any]) -> Path:
    """Where a Hugging Face plan's config is: the package's ``hf/`` (or, for an older package,
    the path its plan names, if it still exists)."""
    path = Path(str(plan["model"].get("path", "")))
    where = path if path.is_absolute() else folder / path
    if (where / "config.json").is_file():
        return where
    if path.is_absolute():
        raise PackageError(
            folder,
            "plan.json",
            f"model.path {path} does not exist here and the package has no {HF}/config.json "
            "(an older export): export the trial again with this tnsearch, on the machine "
            "that has the model",
        )
    raise PackageError(folder, f"{HF}/config.json", "missing")


def factory_of(folder: Path, plan: Mapping[str, Any]) -> Callable[..., nn.Module] | None:
    """How a package's plan is built: a Hugging Face model from its config alone (the
    package's weights are loaded afterwards); None: the plan's own constructor."""
    if plan["model"].get("_target_") != HF_TARGET:
        return None
    from tnsearch.models import from_pretrained

    where = _hf_folder(folder, plan)
    name = (where / "config.json").relative_to(folder).as_posix() if _inside(folder, where) else ""

    def build(path: str = HF, auto_class: str = "AutoModel", **_: Any) -> nn.Module:
        try:
            return from_pretrained(str(where), auto_class, weights=False)
        except ValueError as exc:
            if not name:
                raise
            reason = str(exc).removeprefix("model.path: ").replace(f"{where}: ", "")
            raise PackageError(folder, name, reason) from None

    return build


def raw_model(model: nn.Module, preprocessing: Mapping[str, Any]) -> nn.Module:
    """`model` behind its recorded image normalization (it then takes raw pixels); itself
    when there is none."""
    normalize = preprocessing.get("normalize")
    if preprocessing.get("kind") != "image" or not normalize:
        return model
    from tnsearch.data import Normalize

    return nn.Sequential(Normalize(normalize["mean"], normalize["std"]), model).eval()


# ---- writing ----------------------------------------------------------------------------------


def check_out(out: str | Path, key: str) -> None:
    """Raise `ConfigError(key)` unless `out` can be a package folder: not a file, nor under
    one (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(key, f"{out} is a file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(key, f"{parent} is a file, not a folder: {out} cannot be made")
            break


_STAGE = ".{name}.partial-"


@contextlib.contextmanager
def staging(out: Path):
    """A temporary folder beside `out` to write a package into; on success its files replace
    `out`'s (``checksums.json`` last), on an error `out` is left as it was. A folder a killed
    earlier run left behind (its process gone) is removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = _STAGE.format(name=out.name)
    _remove_stale(out.parent, prefix)
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out.parent))
    try:
        yield work
        if not (work / CHECKSUMS).is_file():
            write_checksums(work)
        _move_into(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale(parent: Path, prefix: str) -> None:
    for stale in parent.glob(f"{prefix}*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _move_into(work: Path, out: Path) -> None:
    """Replace `out`'s package files by `work`'s, the manifest last (a crash in between leaves
    files the old manifest does not match: `load` refuses them, naming one)."""
    from tnsearch.files import new_file_mode

    out.mkdir(exist_ok=True)
    for name in FILES:
        if name != CHECKSUMS and (out / name).is_file() and not (work / name).exists():
            (out / name).unlink()  # from an earlier export, not of this package
    if (out / HF).is_dir():
        shutil.rmtree(out / HF)
    if (work / HF).is_dir():
        (work / HF).chmod(new_file_mode(folder=True))
        (work / HF).replace(out / HF)
    names = sorted(p.name for p in work.iterdir() if p.is_file() and p.name != CHECKSUMS)
    for name in [*names, CHECKSUMS]:
        (work / name).chmod(new_file_mode())  # a temporary file's are private
        (work / name).replace(out / name)
