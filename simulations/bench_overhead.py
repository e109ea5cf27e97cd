"""Overhead benchmark: the federated simulation vs a plain PEFT loop doing the same local steps.

    python -m simulations.bench_overhead                    # the default preset
    python -m simulations.bench_overhead preset=smoke       # any Hydra overrides

The parent runs each side in its own subprocess (so neither inherits the other's memory) and
samples the memory of the child's whole process tree (Ray workers included) every 0.2 s: the sum
of resident set sizes (RSS, which counts a page shared by several processes once in each) and the
sum of proportional set sizes (PSS, which splits a shared page between the processes mapping it,
so the tree's PSS is the physical memory it holds; fedlora maps CPU base weights shared, see
``model.share_weights``). The plain side then replays exactly the steps the federation did: for
each accepted client update in ``clients.jsonl`` it trains that many optimizer steps on that
client's training split with the same batch size and learning rate, in one process, with no
Flower, Ray, serialization or aggregation. The figure printed is what federation costs on top of
the training itself.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over ``proc`` and its descendants, in bytes."""
    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)  # PSS is Linux-only; elsewhere RSS stands in
    return rss, pss


def measure(cmd: list[str]) -> tuple[float, int, int, int]:
    """Run ``cmd``; return (wall seconds, peak tree RSS bytes, peak tree PSS bytes, exit code)."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc, done = psutil.Process(child.pid), threading.Event()
    peak = [0, 0]

    def sample() -> None:
        while not done.is_set():
            rss, pss = _tree_memory(proc)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = child.wait()
    done.set()
    thread.join()
    return time.perf_counter() - t0, peak[0], peak[1], code


def run_federated(overrides: list[str], out_dir: Path) -> None:
    from fedlora.config import compose
    from simulations.engine import simulate

    cfg = compose([*overrides, f"output_dir={out_dir}", "export.verify=false"])
    simulate(cfg, out_dir)


def run_plain(overrides: list[str], fed_dir: Path) -> None:
    """Replay the federation's local steps in one plain PEFT training loop."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from fedlora.config import compose
    from fedlora.data import label_names, load_client_data, make_collator, tokenize_dataset
    from fedlora.models.sources import resolve_model
    from fedlora.models.targets import resolve_target_modules

    cfg = compose(overrides)
    rows = [r for line in (fed_dir / "clients.jsonl").read_text().splitlines()
            if (r := json.loads(line)).get("stage", "train") == "train"]
    path = resolve_model(cfg.model).path
    tok = AutoTokenizer.from_pretrained(path)
    classification = cfg.model.task == "classification"
    labels = label_names(cfg.data, cfg.model.task, cfg.federation.num_clients)
    if classification:
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
        base.config.pad_token_id = base.config.pad_token_id or tok.pad_token_id
    else:
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(
        task_type=TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM, r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=resolve_target_modules(base, cfg.lora)))  # lora.targets presets as in a run
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    collate = make_collator(tok, cfg.model.task)
    model.train()
    steps = 0
    for row in rows:
        data = load_client_data(cfg.data, cfg.model.task, row["partition_id"], cfg.federation.num_clients)
        train = tokenize_dataset(data.train, tok, cfg.model.task, cfg.model.max_length)
        loader = torch.utils.data.DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True,
                                             collate_fn=collate)
        it = iter(loader)
        for _ in range(int(row["train_steps"])):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps += 1
    print(f"plain loop: {steps} steps over {len(rows)} client updates")


USAGE = """usage: python -m simulations.bench_overhead [HYDRA_OVERRIDE ...]

Runs the federated simulation with the overrides, then a plain PEFT + transformers loop doing the
same local steps on the same data, and prints wall time, peak RSS and peak PSS of both side by side
(outputs/bench-overhead/<time>/overhead.json). Example: federation.num_rounds=3 train.local_steps=10"""


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return None
    if argv[:1] == ["--federated"]:
        return run_federated(argv[2:], Path(argv[1]))
    if argv[:1] == ["--plain"]:
        return run_plain(argv[2:], Path(argv[1]))
    out = Path("outputs") / "bench-overhead" / time.strftime("%Y%m%d-%H%M%S")
    fed_dir = out / "federated"
    py = [sys.executable, "-m", "simulations.bench_overhead"]
    fed_s, fed_rss, fed_pss, code = measure([*py, "--federated", str(fed_dir), *argv])
    if code:
        raise SystemExit(f"federated run failed with exit code {code}")
    plain_s, plain_rss, plain_pss, code = measure([*py, "--plain", str(fed_dir), *argv])
    if code:
        raise SystemExit(f"plain run failed with exit code {code}")
    client_lines = (fed_dir / "clients.jsonl").read_text().splitlines()
    steps = sum(json.loads(line).get("train_steps", 0) for line in client_lines)
    result = {
        "overrides": argv, "local_steps_total": steps,
        "federated_s": round(fed_s, 1), "plain_s": round(plain_s, 1), "time_ratio": round(fed_s / plain_s, 2),
        "federated_peak_rss_gb": round(fed_rss / 2**30, 2), "plain_peak_rss_gb": round(plain_rss / 2**30, 2),
        "memory_ratio": round(fed_rss / plain_rss, 2),
        "federated_peak_pss_gb": round(fed_pss / 2**30, 2), "plain_peak_pss_gb": round(plain_pss / 2**30, 2),
        "pss_ratio": round(fed_pss / plain_pss, 2),
    }
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    print("\n| side | wall s | peak RSS GB (process tree) | peak PSS GB (process tree) |\n|---|---|---|---|")
    print(f"| federated ({steps} local steps) | {result['federated_s']} "
          f"| {result['federated_peak_rss_gb']} | {result['federated_peak_pss_gb']} |")
    print(f"| plain PEFT loop (same steps, same data) | {result['plain_s']} "
          f"| {result['plain_peak_rss_gb']} | {result['plain_peak_pss_gb']} |")
    print(f"| ratio | {result['time_ratio']}x | {result['memory_ratio']}x | {result['pss_ratio']}x |")
    print(f"\nwritten to {out / 'overhead.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
