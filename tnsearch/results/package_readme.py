"""The README of an export package: what the model is, its files, and how to run it (tnsearch,
transformers, onnxruntime alone)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tnsearch.measure.latency import PairedStats
from tnsearch.measure.onnx import Exported
from tnsearch.results.package import HF_TARGET
from tnsearch.study.record import Record

__all__ = ["onnx_section", "package_readme"]

#: The onnxruntime lines of a text package's README, per tokenizer output.
_ENCODING = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def speed_text(speed: PairedStats | None, batch_size: int) -> str:
    """E.g. "onnxruntime: 0.71x the dense model's ONNX (1.234 ms vs 1.738 ms per batch of 64,
    AMD EPYC (2 threads))"."""
    if speed is None:
        return (
            "The ONNX latency was not measured here (`python -m tnsearch.export` times it beside "
            "the dense model's ONNX, when onnxruntime is installed)."
        )
    noisy = "; noisy: the paired ratios spread widely" if speed.noisy else ""
    return (
        f"onnxruntime: {speed.ratio:.2f}x the dense model's ONNX ({speed.latency_ms:.3f} ms vs "
        f"{speed.reference_ms:.3f} ms per batch of {batch_size}, {speed.device}{noisy}), "
        f"timed side by side ({speed.pairs} pairs, the order alternating)."
    )


def _checked_text(exported: Exported) -> str:
    if exported.error is None:
        return "onnxruntime was not installed: the ONNX file was not checked."
    return f"onnxruntime matches PyTorch to a relative error of {exported.error:.1e}."


def _inputs_text(record: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
    """What the model takes, in words."""
    kind = record.get("kind")
    if kind == "image":
        shape = "(batch, {}, {}, {})".format(*record["shape"])
        pixels = record.get("pixels") or {}
        if not record.get("normalize"):
            return f"`input` {shape} float32, preprocessed as in training (not recorded)"
        mean = ", ".join(f"{m:.4g}" for m in record["normalize"]["mean"])
        std = ", ".join(f"{s:.4g}" for s in record["normalize"]["std"])
        return (
            f"`input` {shape} float32: raw pixel values as the data set yields them "
            f"({pixels.get('min', 0)}-{pixels.get('max', 255)}), normalized inside "
            f"(mean {mean}, std {std} per channel, of the training split)"
        )
    if kind == "text":
        names = ", ".join(f"`{n}`" for n in record["inputs"])
        return f"{names}, int64 (batch, sequence), at most {record['max_length']} tokens"
    return "the data module's batches"


def _output_text(record: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
    if record.get("kind") == "text":
        if record.get("pooling") == "mean":
            return (
                f"`{record['output']}` (batch, sequence, hidden), which the lines below mean-pool "
                "over the attention mask and L2-normalize: the sentence embedding the fidelity "
                "measured"
            )
        return f"`{record['output']}`"
    classes = plan["inputs"].get("num_classes")
    return f"`logits` (batch, {classes})" if classes else "`logits`"


def _onnx_use(record: Mapping[str, Any]) -> str:
    """The lines that run model.onnx with onnxruntime alone (numpy; the package's tokenizer
    through `tokenizers` for text)."""
    if record.get("kind") == "image":
        c, h, w = record["shape"]
        return f"""```python
import numpy as np, onnxruntime

session = onnxruntime.InferenceSession("path/to/this/folder/model.onnx")
images = np.zeros((2, {c}, {h}, {w}), dtype=np.float32)   # raw pixels, as the data set yields them
logits = session.run(None, {{"input": images}})[0]
```"""
    if record.get("kind") != "text":
        return ""
    feeds = ",\n        ".join(
        f'"{name}": np.array([e.{_ENCODING[name]} for e in encoded], dtype=np.int64)'
        for name in record["inputs"]
    )
    pad = "" if record.get("pad_id") is None else (
        f"\ntokenizer.enable_padding(pad_id={record['pad_id']}, pad_token={record['pad_token']!r})"
    )  # fmt: skip
    if record.get("pooling") == "mean":
        result = """hidden = session.run(None, feeds)[0]   # (batch, sequence, hidden)
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)   # mean over the tokens
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)"""
    else:
        result = "return session.run(None, feeds)[0]"
    return f"""```python
import numpy as np, onnxruntime, tokenizers

folder = "path/to/this/folder"
tokenizer = tokenizers.Tokenizer.from_file(f"{{folder}}/hf/tokenizer.json")
tokenizer.enable_truncation({record["max_length"]}){pad}
session = onnxruntime.InferenceSession(f"{{folder}}/model.onnx")


def embed(sentences):
    encoded = tokenizer.encode_batch(sentences)
    feeds = {{
        {feeds},
    }}
    {result}


vectors = embed(["A class definition is an executable statement.", "Any other sentence."])
```"""


def _python_use(record: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
    if plan["model"].get("_target_") != HF_TARGET:
        raw = (
            '\nraw = tnsearch.load("path/to/this/folder", raw=True)   # takes raw pixels, as '
            "model.onnx"
            if record.get("kind") == "image" and record.get("normalize")
            else ""
        )
        return f"""```python
import tnsearch
model = tnsearch.load("path/to/this/folder")   # nn.Module in eval mode, on inputs as trained{raw}
```"""
    task = "feature-extraction" if record.get("pooling") == "mean" else "text-classification"
    return f"""```python
import tnsearch
from transformers import AutoTokenizer, pipeline

model = tnsearch.load("path/to/this/folder")      # the transformers class, tensorized, eval mode
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder/hf")
run = pipeline("{task}", model=model, tokenizer=tokenizer)
model.save_pretrained("elsewhere")                # a package again (tnsearch.load reads it)
```{_sentence_transformers(record)}
`hf/` holds the model's `config.json` and tokenizer but no weights: `AutoModel.from_pretrained`
cannot read the tensorized layers, so it refuses the folder rather than build the dense model
with random layers."""


def _sentence_transformers(record: Mapping[str, Any]) -> str:
    if record.get("pooling") != "mean":
        return ""
    return """
In sentence-transformers (6), as its `Transformer` module:
```python
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer


class Tensorized(Transformer):                    # its model is the package's
    def _load_model(self, *args, **kwargs):
        return model


encoder = SentenceTransformer(modules=[Tensorized("path/to/this/folder/hf"),
                                       Pooling(model.config.hidden_size), Normalize()])
vectors = encoder.encode(["A sentence.", "Another one."])
```"""


def _files(record: Mapping[str, Any], plan: Mapping[str, Any], onnx: str) -> str:
    hf = plan["model"].get("_target_") == HF_TARGET
    lines = [
        "- `model.safetensors`: the trained weights, the state_dict of "
        "`tnsearch.plan.build(plan)`.",
        "- `plan.json`: the plan (model constructor, input facts, one entry per tensorized layer).",
        "- `preprocessing.json`: what the model was trained on (normalization, tokenization).",
    ]
    if hf or record.get("kind") == "text":
        lines.append(
            "- `hf/`: the Hugging Face config and the tokenizer's files (no weights)."
            if hf
            else "- `hf/`: the tokenizer's files."
        )
    lines.append(onnx)
    lines.append("- `checksums.json`: the sha256 of every file (`tnsearch.load` checks them).")
    return "\n".join(lines)


def package_readme(
    trial: Record,
    plan: Mapping[str, Any],
    record: Mapping[str, Any],
    *,
    study_name: str,
    selection: str,
    exported: Exported | None,
    speed: PairedStats | None,
    batch_size: int,
    metric: str,
    no_onnx: str = "",
) -> str:
    """The README of a trial's package."""
    from tnsearch import plan as plans

    how = f" (selected by `trial={selection}`)" if selection else ""
    rows = [
        (f"validation {metric}", _fmt(trial.quality, ".4f")),
        (f"test {metric}", _fmt(trial.test_quality, ".4f")),
        ("parameters", _fmt(trial.params, ",d")),
        ("compression vs dense", _fmt(trial.compression, ".2f") + "x"),
        ("latency (ms / batch, p50)", _fmt(trial.latency_ms, ".3f")),
    ]
    paths = exported.paths if exported is not None else {}
    layers = "\n".join(
        f"- `{name}`: {spec['topology']}, order {spec['order']}, in modes {spec['in_modes']}, "
        f"out modes {spec['out_modes']}, rank {spec['rank']}"
        + (f", ONNX path {paths[name]}" if name in paths else "")
        for name, spec in plan["layers"].items()
    )
    return f"""# {study_name}, trial {trial.number}

Trial {trial.number} of the tnsearch study `{study_name}`{how}: `{plans.summary(plan)}`.

| | |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in rows)}

Tensorized layers (the others are dense):
{layers or "- none: this is the dense reference"}

## Files
{_files(record, plan, _onnx_file(record, plan, exported, no_onnx))}

## Use
{_python_use(record, plan)}
{onnx_section(record, plan, exported, speed, batch_size, no_onnx=no_onnx)}"""


def _onnx_file(
    record: Mapping[str, Any], plan: Mapping[str, Any], exported: Exported | None, no_onnx: str
) -> str:
    if exported is None:
        return f"- No `model.onnx`: {no_onnx or 'not written for this kind of input'}."
    return "- `model.onnx`: the model for ONNX runtimes, taking raw inputs (see ONNX below)."


def onnx_section(
    record: Mapping[str, Any],
    plan: Mapping[str, Any],
    exported: Exported | None,
    speed: PairedStats | None,
    batch_size: int,
    *,
    no_onnx: str = "",
) -> str:
    """The README's section on ``model.onnx`` (also appended to a README given to
    `write_package`)."""
    if exported is None:
        return f"\n## ONNX\nNo `model.onnx`: {no_onnx or 'not written for this kind of input'}.\n"
    axes = "dynamic batch and sequence axes" if record.get("kind") == "text" else "a dynamic batch"
    return f"""
## ONNX
`model.onnx` takes {_inputs_text(record, plan)} ({axes}) and returns {_output_text(record, plan)}.

Each tensorized layer's graph is the path it runs in PyTorch on a batch of {batch_size} (the path
plan.json names, which `tnsearch.load` runs too): its factors and their sequence of small
contractions; a tensorized embedding gathers slices of its factors, never the dense table.
{_checked_text(exported)}
{speed_text(speed, batch_size)}

With onnxruntime alone (no torch, no tnsearch):

{_onnx_use(record)}
"""
