"""Reading an export package back (`tnsearch.load`), refusing a damaged one.

`load` refuses a damaged package with one line naming the file (`PackageError`, exit 2 in a
command): a missing or changed file (``checksums.json``), a plan that is no plan or names a layer
the model lacks, weights of another shape than the plan builds, a config naming code of its own.
The model is first built on the meta device and its tensors compared with the weights file's
header, so a plan (or a Hugging Face config) cannot make it allocate more than the weights hold.
A Hugging Face model comes back as its transformers class, whose ``save_pretrained`` writes a
package again (`save_package`), never a folder ``AutoModel.from_pretrained`` would read with
random layers.
"""

from __future__ import annotations

import json
import os
import shutil
import types
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch.results.package import (
    CHECKSUMS,
    HF,
    HF_TARGET,
    PackageError,
    check_out,
    factory_of,
    portable_plan,
    raw_model,
    read_plan,
    read_preprocessing,
    staging,
    verify_checksums,
)

__all__ = ["build_checked", "load", "save_package"]

#: What the model may hold beyond its weights (buffers a checkpoint does not store).
_SLACK_BYTES = 256 * 2**20


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


def build_checked(
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
                what = "with hf/config.json " if plan["model"].get("_target_") == HF_TARGET else ""
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
    plan = read_plan(folder)
    config = f"{HF}/config.json"
    if listed is not None and plan["model"].get("_target_") == HF_TARGET and config not in listed:
        raise PackageError(folder, CHECKSUMS, f"does not list {config}")
    if factory is None:  # a plan naming code nobody trusts: refused before anything is read
        plans.check_model(plan["model"], trusted)
    preprocessing = read_preprocessing(folder)
    stored = _stored(folder)
    model = build_checked(plan, folder, trusted, factory or factory_of(folder, plan), stored)
    try:
        state = load_file(str(folder / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - a torn file reads as any kind of error
        text = " ".join(str(exc).split())[:200]
        raise PackageError(folder, "model.safetensors", f"cannot be read ({text})") from None
    model.eval()
    if plan.get("precision"):  # the int8 model that was measured (torch's int8 copy)
        from tnsearch.measure.precision import deployed

        model = deployed(model, plan["precision"]).eval()
    if _is_hf(model):
        _guard_save_pretrained(model, plan, folder)
    if raw:
        return raw_model(model, preprocessing)
    return model


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
            skeleton = plans.build(candidate, factory=factory_of(work, candidate))
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
