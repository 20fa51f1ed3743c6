"""Notebook 15's distributed figures, measured with more repeats: DDP on two local processes (127.0.0.1, gloo on the
CPU, NCCL on GPUs) for full fine-tuning and LoRA, the bytes a communication hook counts per step, the time of a
step with and without its all-reduce (the runs taking turns), FSDP2's parameter bytes per rank, and how far two
processes with batch B end from one process with batch 2B after three steps.

    python experiments/distributed_figures.py [--repeats 30] [--out lora_teach/results/distributed_figures.json]

No test asserts a time: wall-clock times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lora_teach import distributed as D


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30, help="timed calls of each run, taking turns (default 30)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before every process is killed")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    torch.set_num_threads(1)
    run = D.launch("course", 2, timeout=args.timeout,
                   options={"float64_methods": ["full", "lora q,v"], "timing_repeats": args.repeats})
    ranks = run["ranks"]
    figures = {"bytes_per_step": {m: r["bytes_per_step"][-1] for m, r in ranks[0]["ddp"].items()},
               "timing_ms": {f"rank {r['rank']}": {m: {k: 1000 * v for k, v in t.items()}
                                                   for m, t in r["timing"].items()} for r in ranks},
               "fsdp_rank_bytes": [r["fsdp"]["rank_bytes"] for r in ranks],
               "fsdp_unsharded_bytes": ranks[0]["fsdp"]["unsharded_bytes"],
               "peak_rss_mb": [r["peak_rss_mb"] for r in ranks], "equality": {}}
    for dtype in ("float32", "float64"):
        for method in ("full", "lora q,v"):
            _, one = D.train_single(method, dtype=dtype)
            two = run["tensors"][f"ddp/{method}" if dtype == "float32" else f"ddp float64/{method}"]
            start = D.trainable_state(D.build_model(method, dtype=dtype))
            figures["equality"][f"{method} {dtype}"] = {
                "moved": max((one[k] - start[k]).abs().max().item() for k in one),
                "apart": max((one[k] - two[k]).abs().max().item() for k in one)}
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return figures


if __name__ == "__main__":
    main()
