"""Pretrain the course's base model on Jane Austen's novels and write it to lora_teach/weights/.

Seeded and deterministic on a given machine. The shipped weights came from the defaults:
    python experiments/pretrain_base.py
A quick check (used by the tests): python experiments/pretrain_base.py --steps 20 --out /tmp/base --n-layer 1
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from lora_teach.data import LanguageModelingTask
from lora_teach.model import GPT, GPTConfig, save_base_model
from lora_teach.tokenizer import CharTokenizer
from lora_teach.training import seed_everything, train

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "lora_teach" / "weights"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    seed_everything(args.seed)
    cfg = GPTConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, block_size=args.block_size)
    model = GPT(cfg)
    task = LanguageModelingTask("austen", block_size=cfg.block_size)
    start_loss = task.evaluate(model)["loss"]
    t0 = time.perf_counter()
    hist = train(model, task, steps=args.steps, lr=args.lr, batch_size=args.batch_size, warmup=args.warmup,
                 schedule="cosine", weight_decay=0.1, seed=args.seed)
    minutes = (time.perf_counter() - t0) / 60
    val = task.evaluate(model)
    tok = CharTokenizer()
    g = torch.Generator().manual_seed(args.seed)
    sample = tok.decode(model.generate(tok.tensor("Elizabeth")[None], 200, temperature=0.8, generator=g)[0])
    record = {
        "training": {
            "corpus": "austen (train split: 9 of every 10 chunks of 1000 characters)",
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
            "schedule": "cosine to lr/10", "weight_decay": 0.1, "seed": args.seed,
            "minutes": round(minutes, 1), "threads": torch.get_num_threads(),
            "hardware": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "val_loss_start": round(start_loss, 4), "val_loss": round(val["loss"], 4),
            "final_train_loss": round(sum(hist.loss[-50:]) / len(hist.loss[-50:]), 4),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "sample": sample,
    }
    save_base_model(model, args.out, record)
    print(f"validation loss {start_loss:.3f} -> {val['loss']:.3f} in {minutes:.1f} min; wrote {args.out}")
    print(sample)
    return {"history": hist, **record}


if __name__ == "__main__":
    main()
