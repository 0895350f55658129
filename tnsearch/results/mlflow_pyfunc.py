"""The MLflow pyfunc of a text model's package: strings in, embeddings (or logits) out; and of
an int8 image package (`TensorModel`: its int8 ONNX graph, raw pixels in, logits out).

A text model's MLflow model names this module as its ``loader_module``: MLflow calls
`_load_pyfunc` with the package folder stored in the model, and only this installed module's code
runs. The package's files are read as data: ``model.onnx`` by onnxruntime, ``hf/tokenizer.json``
by tokenizers, ``preprocessing.json``; nothing stored in the model is executed (no pickle, no
code file). It imports numpy, onnxruntime and tokenizers, not torch.

``predict(["a sentence", ...])`` tokenizes as the model was trained (``max_length``, the pad
token), runs the ONNX graph, and returns one row per sentence: the mean-pooled, L2-normalized
embedding (batch, hidden) of a model whose output is its hidden states, else its logits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["TensorModel", "TextModel"]

#: Sentences per onnxruntime run.
CHUNK = 64
_ENCODING = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def _load_pyfunc(data_path: str) -> TextModel | TensorModel:
    """MLflow's entry point (`loader_module`): the model of the package at `data_path` (a text
    package's, or an int8 image package's ONNX graph: raw pixels in, logits out)."""
    record = json.loads((Path(data_path) / "preprocessing.json").read_text(encoding="utf-8"))
    return TextModel(data_path) if record.get("kind") == "text" else TensorModel(data_path)


class TensorModel:
    """A one-tensor package's ONNX model (an int8 one: what was timed; torch's int8 Linear
    cannot be exported as a PT2 program): raw inputs (batch, ...) float32 in, its output out.

    Args:
        folder: the package folder (``model.onnx``).
        threads: onnxruntime's intra-op threads (None: its default).
    """

    def __init__(self, folder: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(
            str(Path(folder) / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def predict(self, model_input: Any, params: dict | None = None) -> Any:
        """The graph's output for `model_input` (an array of raw inputs, batch first)."""
        import numpy as np

        (out,) = self.session.run(None, {"input": np.asarray(model_input, dtype=np.float32)})
        return out


class TextModel:
    """A text package's ONNX model behind its own tokenizer (see the module docstring).

    Args:
        folder: the package folder (``model.onnx``, ``hf/tokenizer.json``,
            ``preprocessing.json``).
        threads: onnxruntime's intra-op threads (None: its default).
    """

    def __init__(self, folder: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime
        import tokenizers

        folder = Path(folder)
        self.record = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))
        if self.record.get("kind") != "text":
            raise ValueError(f"{folder}/preprocessing.json: not a text model's package")
        self.tokenizer = tokenizers.Tokenizer.from_file(str(folder / "hf" / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(self.record["max_length"]))
        if self.record.get("pad_id") is not None:
            self.tokenizer.enable_padding(
                pad_id=int(self.record["pad_id"]), pad_token=str(self.record["pad_token"])
            )
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def predict(self, model_input: Any, params: dict | None = None) -> Any:
        """One row per sentence: embeddings (batch, hidden) float32, or logits.

        Args:
            model_input: sentences: a string, a list of them, a numpy array or a pandas
                DataFrame / Series (its first column), as MLflow hands them over.
        """
        import numpy as np

        sentences = _sentences(model_input)
        rows = [self._run(sentences[i : i + CHUNK]) for i in range(0, len(sentences), CHUNK)]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(rows)

    def _run(self, sentences: list[str]) -> Any:
        import numpy as np

        encoded = self.tokenizer.encode_batch(sentences)
        feeds = {
            name: np.array([getattr(e, _ENCODING[name]) for e in encoded], dtype=np.int64)
            for name in self.record["inputs"]
        }
        (out,) = self.session.run(None, feeds)
        if self.record.get("pooling") != "mean":
            return out
        mask = feeds["attention_mask"][..., None].astype(np.float32)  # (B, L, 1)
        pooled = (out * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)  # (B, H)
        norm = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norm).astype(np.float32)


def _sentences(model_input: Any) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:  # a DataFrame: its first column
        model_input = model_input[columns[0]]
    values = getattr(model_input, "tolist", None)
    items = values() if callable(values) else list(model_input)
    return [str(s) for s in _flat(items)]


def _flat(items: Iterable[Any]) -> Iterable[Any]:
    for item in items:
        if isinstance(item, list | tuple):
            yield from _flat(item)
        else:
            yield item
