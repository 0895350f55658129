"""A text package at home: its ONNX in onnxruntime alone against `tnsearch.load`'s torch model,
and its onnxruntime latency beside the dense model's ONNX.

The package is an export of a text model (`python -m tnsearch.export study=minilm ...`). Two
measurements:

- fidelity (not timing): the README's onnxruntime lines, run as written in a fresh process with
  numpy, onnxruntime and tokenizers only, embed sentences no study saw (the Zen of Python, read
  from CPython's ``this.py``, and ``--file`` lines); the cosine of each embedding to
  `tnsearch.load`'s torch model's (mean-pooled, L2-normalized), and whether that process
  imported torch. Target (issue 22): >= 0.9999 on every sentence, torch not imported.
- latency (timing: run it on an idle machine): ``model.onnx`` and the dense model's ONNX
  (exported alike from the package's ``hf/config.json``; timing does not depend on weights),
  each in a CPU session with torch's threads, timed in turn (``latency.paired_calls``) on
  ``--batch`` of the embedded sentences padded to the package's ``max_length``.

Prints a markdown table, writes nothing: copy it into bench/RESULTS.md.

    python bench/package.py PACKAGE [--batch 16] [--pairs 30] [--file more.txt] [--no-timing]
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

# `python bench/package.py` puts bench/ first on the path: bench/onnx.py would shadow onnx
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402


def zen() -> list[str]:
    """The Zen of Python's 19 lines, from ``this.py``'s ROT13 text (not imported: it prints)."""
    source = Path(importlib.util.find_spec("this").origin).read_text()
    text = re.search(r's = """(.*?)"""', source, re.S)[1]
    lines = codecs.decode(text, "rot13").splitlines()
    return [line for line in lines[2:] if line.strip()]


def onnx_alone(package: Path, sentences: list[str]) -> tuple[np.ndarray, bool]:
    """The README's onnxruntime lines in a fresh process: (embeddings, torch imported)."""
    readme = (package / "README.md").read_text()
    (code,) = re.findall(
        r"```python\n(import numpy as np, onnxruntime, tokenizers\n.*?)```", readme, re.S
    )
    code = code.replace("path/to/this/folder", str(package))
    shown = f"json.dumps([embed({sentences!r}).tolist(), 'torch' in sys.modules])"
    code += f"\nimport json, sys\nprint({shown})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    vectors, imported = json.loads(done.stdout.strip().splitlines()[-1])
    return np.asarray(vectors), imported


def torch_embeddings(model, tokenizer, sentences: list[str], max_length: int) -> np.ndarray:
    encoded = tokenizer(
        sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--file", type=Path, help="more sentences, one per line")
    parser.add_argument("--no-timing", action="store_true", help="the fidelity only")
    opts = parser.parse_args()

    from transformers import AutoTokenizer

    import tnsearch
    from tnsearch.results import package as packages
    from tnsearch.results import package_onnx

    folder = opts.package
    record = packages.read_preprocessing(folder)
    if record.get("kind") != "text" or record.get("pooling") != "mean":
        sys.exit(f"{folder}: not a text package of embeddings (preprocessing.json)")
    sentences = zen()
    if opts.file:
        sentences += [s.strip() for s in opts.file.read_text().splitlines() if s.strip()]
    model = tnsearch.load(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder / "hf")
    expected = torch_embeddings(model, tokenizer, sentences, record["max_length"])
    got, imported = onnx_alone(folder, sentences)
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    rows = [
        (f"cosine, onnxruntime alone vs torch ({len(sentences)} unseen sentences)",
         f"min {cosine.min():.6f}, mean {cosine.mean():.6f}", ">= 0.9999",
         "yes" if cosine.min() >= 0.9999 else "no"),
        ("torch imported by the onnxruntime process", "yes" if imported else "no", "no",
         "no" if imported else "yes"),
    ]  # fmt: skip
    device = ""
    if not opts.no_timing:
        plan = json.loads((folder / "plan.json").read_text())
        batch = package_onnx.example(plan, record, opts.batch, tokenizer=tokenizer)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        speed = package_onnx.speed(
            plan, record, folder / "model.onnx", batch, factory=packages.factory_of(folder, plan)
        )
        device = f"; {speed.device}, load average {load} before"
        rows.append(
            (f"onnxruntime ms per batch of {opts.batch} x {record['max_length']} tokens",
             f"{speed.latency_ms:.3f} vs {speed.reference_ms:.3f} dense: {speed.ratio:.2f}x "
             f"({speed.ratio_p10:.2f}-{speed.ratio_p90:.2f}{', noisy' if speed.noisy else ''})",
             "-", "-")
        )  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    print(f"Package {folder} ({params:,} parameters){device}")
    print()
    print("| measurement | value | target | met |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
