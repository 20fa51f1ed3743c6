"""Notebook 15's LoRA run through Hugging Face accelerate: the same model, batches and AdamW steps as the DDP run.

Launch it on two local processes (CPU or GPUs) with
    accelerate launch --multi_gpu --num_processes 2 --main_process_ip 127.0.0.1 lora_teach/accelerate_train.py OUT
Each process takes its rows of every batch; `accelerator.prepare` wraps the model in DDP, and
`accelerator.backward` runs the backward pass whose gradients DDP all-reduces. The main process writes the mean
loss of every step to OUT/accelerate.json and the trained LoRA weights to OUT/accelerate.safetensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from lora_teach.distributed import BATCH, LR, STEPS, build_model, rank_batch, save_tensors, trainable_state
from lora_teach.training import GRAD_CLIP


def main(out: str, method: str = "lora q,v", steps: int = STEPS) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU processes talk over gloo, GPUs over NCCL
    model = build_model(method, accelerator.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model, opt = accelerator.prepare(model, opt)
    rank, world = accelerator.process_index, accelerator.num_processes
    losses = []
    for step in range(steps):
        x, y, mask = rank_batch(step, BATCH, rank, world, accelerator.device)  # this process's rows
        _, loss = model(x, y, loss_mask=mask)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
    if accelerator.is_main_process:
        save_tensors({"state": trainable_state(accelerator.unwrap_model(model))}, Path(out) / "accelerate.safetensors")
        (Path(out) / "accelerate.json").write_text(json.dumps({
            "losses": losses, "world_size": world, "distributed_type": str(accelerator.distributed_type)}))
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
