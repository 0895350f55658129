"""Packages the package tests share: a tiny BERT with its tokenizer as a Hugging Face folder,
tensorized and written by `write_package`, and an MLP of the digits (nothing is trained: the
weights are the decomposition or the default initialization, which is all a package test needs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.helpers import bert_tokenizer, tiny_bert_config

#: The BERT package's tensorized layers: the word embedding and one projection.
BERT_LAYERS = {
    "embeddings.word_embeddings": {"topology": "mpo", "order": 2, "rank": 8},
    "encoder.layer.0.attention.self.query": {"topology": "tucker", "order": 2, "rank": 4},
}


def hf_folder(root: Path) -> Path:
    """A tiny BERT (random weights) and its WordPiece tokenizer in one Hugging Face folder."""
    import transformers

    from tnsearch.data import embedded_sentences

    tokenizer = bert_tokenizer(root / "tok", embedded_sentences()[:300])
    vocab = len(transformers.AutoTokenizer.from_pretrained(tokenizer))
    torch.manual_seed(0)
    folder = root / "model"
    transformers.BertModel(tiny_bert_config(vocab)).save_pretrained(folder)
    for file in tokenizer.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def text_data(folder: Path, max_length: int = 16):
    """`data=text` on the folder's tokenizer (the embedded sentences, 200 of them)."""
    from tnsearch.data import TextDataModule

    data = TextDataModule(
        tokenizer=str(folder), model_path=str(folder), max_length=max_length, limit=200
    )
    data.setup()
    return data


def tensorized_trial(folder: Path, data, weights: Path, layers=BERT_LAYERS):
    """A trial of `folder`'s model with `layers` tensorized (from the decomposition), its
    weights saved at `weights`, as a study records it."""
    from tnsearch import plan as plans
    from tnsearch import tn
    from tnsearch.study.record import Record

    node = {"_target_": "tnsearch.models.from_pretrained", "path": str(folder)}
    specs = {n: {**s, "in_modes": None, "out_modes": None} for n, s in layers.items()}
    plan = plans.make({**node, "auto_class": "AutoModel"}, data.facts, specs)
    model = plans.build(plan, init="decompose")
    for name, spec in plan.layers.items():  # the modes and ranks the layers took
        layer = model.get_submodule(name)
        spec.update(in_modes=list(layer.in_modes), out_modes=list(layer.out_modes))
        spec["rank"] = list(layer.rank) if len(set(layer.rank)) > 1 else layer.rank[0]
    torch.save(model.state_dict(), weights)
    params = tn.n_params(model)
    return Record(number=2, plan=plan.but(params=params), quality=0.9, params=params)


def bert_package(root: Path) -> tuple[Path, Path, object]:
    """(package, Hugging Face folder, data): the tiny BERT's package, written from a study's
    trial with its data."""
    from tnsearch.results.export import write_package

    folder = hf_folder(root)
    data = text_data(folder)
    trial = tensorized_trial(folder, data, root / "weights.pt")
    out = write_package(
        trial, root / "weights.pt", root / "pkg", study_name="bert", data=data, batch_size=4
    )
    return out, folder, data


def embeddings(model, tokenizer, sentences, max_length: int = 16):
    """The mean-pooled, L2-normalized embeddings (N, H) of a Hugging Face model, as numpy."""
    encoded = tokenizer(
        sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state  # (N, L, H)
    mask = encoded["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()
