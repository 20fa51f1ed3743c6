"""Train the adapters the widgets show, once, and write them to lora_teach/data/precomputed/lora_updates.safetensors.

The LoRA update viewer moves through ranks, alpha values and training steps instantly because nothing trains
while you move a slider: this script trains ahead, on the Austen -> Shakespeare domain-adaptation task,
    - LoRA on q_proj and v_proj at every rank in RANKS (alpha fixed at ALPHA, as the LoRA paper keeps it), and
      keeps A and B of one block at every step in SNAPSHOT_STEPS;
    - full fine-tuning for the same number of steps, and keeps Delta W = W_tuned - W_0 of the same layers
      (the rank explorer's "real Delta W").
It also records the Shakespeare validation loss of every snapshot, and of the final adapters rescaled to each
alpha in ALPHAS, so the viewer can print them. Seeded. The shipped file took 23 minutes on two CPU cores that
other jobs were sharing (load average 6 to 10):
    python experiments/precompute_lora_updates.py
It holds safetensors tensors (A and B in fp16, Delta W in fp32) and a JSON string in its metadata (settings,
losses, versions): about 0.4 MB, no pickle. Results: Shakespeare validation loss 2.226 (base) -> 1.904 (r=1) ...
1.821 (r=16) after 300 steps; full fine-tuning 1.550.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_teach.data import LanguageModelingTask
from lora_teach.lora import LoRAConfig, apply_lora, lora_state_dict
from lora_teach.model import load_base_model
from lora_teach.training import SEED, seed_everything, train

OUT = Path(__file__).resolve().parents[1] / "lora_teach" / "data" / "precomputed" / "lora_updates.safetensors"
RANKS = (1, 2, 4, 8, 16)
ALPHA = 8  # fixed for every rank (the paper sets alpha to the first r tried and does not tune it)
ALPHAS = (1, 2, 4, 8, 16, 32, 64)  # the viewer's alpha slider: the final adapters rescaled to alpha / r
SNAPSHOT_STEPS = (0, 5, 10, 25, 50, 100, 200, 300)
BLOCK = 2  # the block whose q_proj and v_proj are stored (notebook 07 also looks at block 2)
LAYERS = (f"blocks.{BLOCK}.attn.q_proj", f"blocks.{BLOCK}.attn.v_proj")
TARGETS = ("q_proj", "v_proj")


def merged_copy(base: torch.nn.Module, adapters: dict[str, torch.Tensor], scaling: float) -> torch.nn.Module:
    """A plain copy of `base` with W0 + scaling * B A in every layer that `adapters` (a lora_state_dict) names."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for key, A in adapters.items():
            if key.endswith(".lora_A"):
                layer = key[: -len(".lora_A")]
                B = adapters[f"{layer}.lora_B"]
                model.get_submodule(layer).weight += scaling * (B.float() @ A.float())  # (out, r) @ (r, in)
    return model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=SNAPSHOT_STEPS[-1])
    ap.add_argument("--lr", type=float, default=3e-3, help="LoRA learning rate")
    ap.add_argument("--full-lr", type=float, default=3e-4, help="full fine-tuning learning rate")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    snapshot_steps = tuple(s for s in SNAPSHOT_STEPS if s <= args.steps)
    if snapshot_steps[-1] != args.steps:
        snapshot_steps += (args.steps,)

    t0 = time.perf_counter()
    seed_everything(SEED)
    base = load_base_model(torch.device("cpu"))
    task = LanguageModelingTask("shakespeare")
    base_loss = task.evaluate(base)["loss"]
    print(f"base model, Shakespeare validation loss {base_loss:.4f}")

    tensors: dict[str, torch.Tensor] = {}
    losses: dict[str, dict[str, float]] = {}
    alpha_losses: dict[str, dict[str, float]] = {}
    for r in RANKS:
        model = apply_lora(copy.deepcopy(base), LoRAConfig(r=r, alpha=ALPHA, target_modules=TARGETS))
        snaps = {0: {k: v.clone() for k, v in lora_state_dict(model).items()}}

        def keep(step, loss, history, model=model, snaps=snaps):
            if step in snapshot_steps:
                snaps[step] = {k: v.clone() for k, v in lora_state_dict(model).items()}

        train(model, task, steps=args.steps, lr=args.lr, batch_size=args.batch_size, progress=False,
              callback=keep)
        losses[str(r)] = {str(s): task.evaluate(merged_copy(base, snaps[s], ALPHA / r))["loss"] for s in snaps}
        final = snaps[args.steps]
        alpha_losses[str(r)] = {str(a): task.evaluate(merged_copy(base, final, a / r))["loss"] for a in ALPHAS}
        for s, state in snaps.items():
            for layer in LAYERS:
                for part in ("lora_A", "lora_B"):
                    tensors[f"r{r}.step{s}.{layer}.{part}"] = state[f"{layer}.{part}"].half().contiguous()
        print(f"LoRA r={r:2d}: loss by step {losses[str(r)]}  ({time.perf_counter() - t0:.0f} s)")

    full = copy.deepcopy(base)
    train(full, task, steps=args.steps, lr=args.full_lr, batch_size=args.batch_size, progress=False)
    full_loss = task.evaluate(full)["loss"]
    for layer in LAYERS:
        delta = full.get_submodule(layer).weight - base.get_submodule(layer).weight  # (out, in)
        tensors[f"full.{layer}.delta"] = delta.detach().float().contiguous()
    print(f"full fine-tuning: loss {full_loss:.4f}  ({time.perf_counter() - t0:.0f} s)")

    meta = {
        "task": task.name, "ranks": list(RANKS), "alpha": ALPHA, "alphas": list(ALPHAS),
        "steps": list(snapshot_steps), "layers": list(LAYERS), "target_modules": list(TARGETS),
        "lr": args.lr, "full_lr": args.full_lr, "batch_size": args.batch_size, "seed": SEED,
        "base_loss": base_loss, "full_loss": full_loss, "loss": losses, "alpha_loss": alpha_losses,
        "made_by": "experiments/precompute_lora_updates.py",
        "made_with": f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={"lora_teach": json.dumps(meta)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB) in {meta['seconds']} s")
    return meta


if __name__ == "__main__":
    main()
