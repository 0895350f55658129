"""The export package: one trained model in a folder that needs neither the study nor the
machine that made it (written by `python -m tnsearch.export`, `tnsearch.compress` and a
tensorized model's ``save_pretrained``; read by `tnsearch.load`).

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
- ``checksums.json``: the sha256 of every other file, written last; `load` checks them.

`load` refuses a damaged package with one line naming the file (`PackageError`, exit 2 in a
command): a missing or changed file, a plan that is no plan or names a layer the model lacks,
weights of another shape than the plan builds, a config naming code of its own. The model is
first built on the meta device and its tensors compared with the weights file's header, so a
plan cannot make it allocate more than the weights hold.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import types
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch.config import ConfigError
from tnsearch.ui import warn

__all__ = [
    "CHECKSUMS",
    "HF",
    "PackageError",
    "check_out",
    "load",
    "portable_plan",
    "read_preprocessing",
    "save_package",
    "verify_checksums",
    "write_checksums",
]

#: The manifest of a package's files (sha256), written last.
CHECKSUMS = "checksums.json"
#: The package's Hugging Face folder (config.json, tokenizer files; no weights).
HF = "hf"
#: A package's files, besides hf/ (checksums.json last).
FILES = (
    "model.safetensors",
    "plan.json",
    "preprocessing.json",
    "model.onnx",
    "README.md",
    CHECKSUMS,
)
#: What the model may hold beyond its weights (buffers a checkpoint does not store).
_SLACK_BYTES = 256 * 2**20
_HF_TARGET = "tnsearch.models.from_pretrained"


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
    if plan["model"].get("_target_") == _HF_TARGET:
        plan["model"]["path"] = HF
    return plan


def _read_plan(folder: Path) -> dict[str, Any]:
    from tnsearch import plan as plans

    try:
        return plans.load(folder / "plan.json")
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


def _factory(folder: Path, plan: Mapping[str, Any]) -> Callable[..., nn.Module] | None:
    """How a package's plan is built: a Hugging Face model from its config alone (the
    package's weights are loaded afterwards); None: the plan's own constructor."""
    if plan["model"].get("_target_") != _HF_TARGET:
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


# ---- building within bounds -----------------------------------------------------------------


def _stored(folder: Path, name: str = "model.safetensors") -> dict[str, tuple[int, ...]]:
    """The tensors a safetensors file holds, from its header (nothing else is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / name), "pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own kinds
        text = " ".join(str(exc).split())[:200]
        raise PackageError(folder, name, f"not a safetensors file ({text})") from None


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _build(
    plan: Mapping[str, Any],
    folder: Path,
    trusted: Collection[str],
    factory: Callable[..., nn.Module] | None,
    stored: Mapping[str, tuple[int, ...]],
) -> nn.Module:
    """The plan's model, default-initialized, once its tensors are known to be those stored:
    built on the meta device first (nothing allocated), compared with the weights file's
    header, and only then built for real."""
    from tnsearch import plan as plans
    from tnsearch.models import MODELS

    def make(device: str) -> nn.Module:
        with torch.device(device):
            try:
                return plans.build(plan, trusted=trusted, factory=factory)
            except (plans.UntrustedModelError, PackageError):
                raise
            except (ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
                text = " ".join(str(exc).split())[:300]
                what = "with hf/config.json " if plan["model"].get("_target_") == _HF_TARGET else ""
                raise PackageError(
                    folder, "plan.json", f"does not build a model {what}({text})"
                ) from None

    own = factory is None and plan["model"].get("_target_") in MODELS
    try:
        skeleton = make("meta")
    except (plans.UntrustedModelError, PackageError):
        raise
    except Exception:  # a constructor of the caller's that cannot run on the meta device
        if own:
            raise
        skeleton = None
    if skeleton is not None:
        _compare(folder, skeleton, stored)
    model = make("cpu")
    if skeleton is None:
        _compare(folder, model, stored)
    return model


def _compare(folder: Path, model: nn.Module, stored: Mapping[str, tuple[int, ...]]) -> None:
    """Raise unless the model's state_dict is exactly the stored tensors (names and shapes),
    and the model holds little beyond them."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shaped = sorted(k for k in set(expected) & set(stored) if tuple(expected[k].shape) != stored[k])
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) the plan builds not stored ({_few(missing)})")
        if unexpected:
            parts.append(
                f"{len(unexpected)} stored tensor(s) the plan has no place for ({_few(unexpected)})"
            )
        if shaped:
            k = shaped[0]
            parts.append(
                f"{len(shaped)} of another shape ({k}: stored {list(stored[k])}, the plan "
                f"builds {list(expected[k].shape)})"
            )
        text = "does not match plan.json: " + "; ".join(parts)
        raise PackageError(folder, "model.safetensors", text)
    tensors = {f"p.{k}": v for k, v in model.named_parameters()}
    tensors.update({f"b.{k}": v for k, v in model.named_buffers()})
    beyond = _nbytes(tensors) - _nbytes(expected)
    if beyond > _SLACK_BYTES:
        raise PackageError(
            folder,
            "plan.json",
            f"builds a model of {beyond / 2**30:.1f} GiB more than its weights hold "
            "(buffers no weights file stores): not built",
        )


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


# ---- loading ----------------------------------------------------------------------------------


def load(
    path: str | Path,
    *,
    trusted: Collection[str] = (),
    factory: Callable[..., nn.Module] | None = None,
    verify: bool = True,
    raw: bool = False,
) -> nn.Module:
    """Rebuild a package's model (eval mode) from its folder.

    Args:
        path: the package folder (or a file in it).
        trusted: model constructors (`_target_` paths) the plan may name besides tnsearch's
            own models; anything else is refused before it is called.
        factory: build the dense model with this callable instead (plan arguments + inputs).
        verify: check the files against ``checksums.json`` first (False: load them as they are).
        raw: an image model that takes raw pixels (`preprocessing.json`'s normalization first,
            as the package's ONNX and MLflow models do); False: the model as trained, on
            normalized inputs.

    Returns:
        The model: for a Hugging Face package the transformers class (its ``config`` set),
        whose ``save_pretrained`` writes a package again.

    Raises:
        PackageError: ``<folder>/<file>: <what is wrong>``: nothing is returned half-loaded.
        UntrustedModelError: the plan names a constructor nobody trusts (nothing is called).
    """
    from safetensors.torch import load_file

    from tnsearch import plan as plans

    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    for name in ("plan.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not an exported model (no {name})")
    listed = verify_checksums(folder, needed=["plan.json", "model.safetensors"]) if verify else None
    plan = _read_plan(folder)
    config = f"{HF}/config.json"
    if listed is not None and plan["model"].get("_target_") == _HF_TARGET and config not in listed:
        raise PackageError(folder, CHECKSUMS, f"does not list {config}")
    if factory is None:  # a plan naming code nobody trusts: refused before anything is read
        plans.check_model(plan["model"], trusted)
    preprocessing = read_preprocessing(folder)
    stored = _stored(folder)
    model = _build(plan, folder, trusted, factory or _factory(folder, plan), stored)
    try:
        state = load_file(str(folder / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - a torn file reads as any kind of error
        text = " ".join(str(exc).split())[:200]
        raise PackageError(folder, "model.safetensors", f"cannot be read ({text})") from None
    model.eval()
    if _is_hf(model):
        _guard_save_pretrained(model, plan, folder)
    if raw:
        return raw_model(model, preprocessing)
    return model


def raw_model(model: nn.Module, preprocessing: Mapping[str, Any]) -> nn.Module:
    """`model` behind its recorded image normalization (it then takes raw pixels); itself
    when there is none."""
    normalize = preprocessing.get("normalize")
    if preprocessing.get("kind") != "image" or not normalize:
        return model
    from tnsearch.data import Normalize

    return nn.Sequential(Normalize(normalize["mean"], normalize["std"]), model).eval()


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and callable(getattr(type(model), "save_pretrained", None))


# ---- save_pretrained of a tensorized Hugging Face model -------------------------------------


#: The attribute of a loaded Hugging Face model that holds its package's plan and folder.
_ORIGIN = "_tnsearch_package"


def _guard_save_pretrained(model: nn.Module, plan: Mapping[str, Any], source: Path) -> None:
    """Make the model's ``save_pretrained`` write a package (that `load` reads back) instead of
    a Hugging Face folder that ``AutoModel.from_pretrained`` would read as the dense model with
    random layers in place of the tensorized ones. (A bound method: a copy of the model, e.g.
    `tnsearch.truncate`'s, saves itself.)"""
    object.__setattr__(model, _ORIGIN, (json.loads(json.dumps(plan)), source))
    model.save_pretrained = types.MethodType(_save_pretrained, model)


def _save_pretrained(self: nn.Module, save_directory: str | os.PathLike, **kwargs: Any) -> None:
    """Write this tensorized model as a tnsearch package (read it back with `tnsearch.load`): a
    Hugging Face model folder cannot hold tensorized layers. ``push_to_hub`` is refused."""
    if kwargs.get("push_to_hub"):
        raise ValueError(
            "save_pretrained: a tensorized model is saved as a tnsearch package, not pushed to "
            "the Hub: save it, then upload the folder yourself"
        )
    plan, source = getattr(self, _ORIGIN)
    state = kwargs.get("state_dict") or self.state_dict()
    save_package(self, plan, save_directory, state=state, source=source)


def save_package(
    model: nn.Module,
    plan: Mapping[str, Any],
    out: str | Path,
    *,
    state: Mapping[str, torch.Tensor] | None = None,
    source: Path | None = None,
) -> Path:
    """Write `model` (built from `plan`) as a package without ONNX: its weights, plan,
    Hugging Face config, the tokenizer and preprocessing of the package `source` it was
    loaded from, a README, checksums. Refused (nothing written) when its tensors no longer
    match its plan (e.g. after `tnsearch.truncate`)."""
    from safetensors.torch import save_file

    from tnsearch import plan as plans

    out = Path(out)
    check_out(out, "save_directory")
    state = dict(state if state is not None else model.state_dict())
    plan = portable_plan(plan)
    with staging(out) as work:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
        save_file(tensors, work / "model.safetensors", metadata={"format": "pt"})
        (work / HF).mkdir()
        model.config.save_pretrained(str(work / HF))
        if source is not None:
            for file in (source / HF).glob("*"):
                if file.is_file() and file.name != "config.json":
                    shutil.copy2(file, work / HF / file.name)
            if (source / "preprocessing.json").is_file():
                shutil.copy2(source / "preprocessing.json", work / "preprocessing.json")
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        plan = _matching_plan(plan, model, work, shapes)
        plans.save(plan, work / "plan.json")
        (work / "README.md").write_text(
            "# A tensorized model\n\nWritten by `save_pretrained` of a model that "
            "`tnsearch.load` read. Read it back with\n\n```python\nimport tnsearch\n"
            'model = tnsearch.load("path/to/this/folder")\n```\n'
        )
    return out


def _matching_plan(
    plan: dict[str, Any], model: nn.Module, work: Path, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Any]:
    """`plan`, or its ranks as the model's now are (`tnsearch.truncate`), if it builds exactly
    these tensors; else ValueError ``save_pretrained: ...``."""
    from tnsearch import plan as plans

    def matches(candidate: Mapping[str, Any]) -> str:
        with torch.device("meta"):
            skeleton = plans.build(candidate, factory=_factory(work, candidate))
        try:
            _compare(work, skeleton, shapes)
        except PackageError as exc:
            return exc.reason
        return ""

    wrong = matches(plan)
    if not wrong:
        return plan
    again = _ranks_now(plan, model)
    if again is not None and not matches(again):
        return again
    raise ValueError(f"save_pretrained: the model's tensors no longer match its plan ({wrong})")


def _ranks_now(plan: Mapping[str, Any], model: nn.Module) -> dict[str, Any] | None:
    """`plan` with each tensorized layer's rank as it is in `model` (a tensorized embedding's
    that of the layer it wraps); None where a layer of the plan is not tensorized there."""
    from tnsearch import tn

    out = json.loads(json.dumps(plan))
    for name, spec in out["layers"].items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return None
        layer = getattr(layer, "layer", layer)  # TNEmbedding -> its TNLayer
        if not isinstance(layer, tn.TNLayer):
            return None
        ranks = [int(r) for r in layer.rank]
        spec["rank"] = ranks[0] if len(set(ranks)) == 1 else ranks
    if "params" in out:
        out["params"] = tn.n_params(model)
    return out


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
