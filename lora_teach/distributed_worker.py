"""One rank of a distributed run: `python -m lora_teach.distributed_worker JOB OUT_DIR OPTIONS_JSON`.

Started by `lora_teach.distributed.launch` (or torchrun with the same arguments). Each rank writes what it
measured to OUT_DIR/rank<r>.json; rank 0 also writes the trained parameters to OUT_DIR/tensors.safetensors.
Jobs:
    ddp     DDP on every method of `methods`: losses, bytes all-reduced per step, trained weights; with
            `timing_repeats` > 0, a step with and without its all-reduce, and the all-reduce alone, taking turns
    fsdp    FSDP2 on `fsdp_method`: parameter bytes per rank before training, losses, trained weights
    course  ddp, then fsdp, in one process group (what notebook 15 runs)
    hang    rank 1 never reaches the barrier (to test the launcher's timeout); fail: rank 1 raises
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from lora_teach import distributed as D
from lora_teach.measure import interleaved_times
from lora_teach.training import train_step


def mean_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def run_ddp(rank, world, device, opts, report, tensors):
    from torch.nn.parallel import DistributedDataParallel as DDP

    steps, per_rank = opts.get("steps", D.STEPS), opts.get("batch", D.BATCH)
    models = {}
    runs = [(m, "float32") for m in opts.get("methods", list(D.METHODS))]
    runs += [(m, "float64") for m in opts.get("float64_methods", [])]
    for method, dtype in runs:
        model = D.build_model(method, device, dtype)
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        counter = D.AllReduceCounter()
        ddp.register_comm_hook(counter, D.AllReduceCounter.hook)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.get("lr", D.LR))
        losses, sent, buckets = [], [], []
        for step in range(steps):
            counter.reset()
            loss = train_step(ddp, opt, D.rank_batch(step, per_rank, rank, world, device))
            losses.append(mean_over_ranks(loss.item()))
            sent.append(counter.bytes)
            buckets.append(counter.buckets)
        if dtype == "float64":
            tensors[f"ddp float64/{method}"] = D.trainable_state(model)
            report["ddp float64"] = report.get("ddp float64", {}) | {method: losses}
            continue
        report["ddp"][method] = {"losses": losses, "bytes_per_step": sent, "buckets_per_step": buckets,
                                 "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                                 "parameters": sum(p.numel() for p in model.parameters())}
        tensors[f"ddp/{method}"] = D.trainable_state(model)
        models[method] = (ddp, sent[-1])
    repeats = opts.get("timing_repeats", 0)
    if repeats:
        report["timing"] = time_turns(models, D.rank_batch(0, per_rank, rank, world, device), repeats)


def time_turns(models: dict, batch, repeats: int) -> dict:
    """Median seconds of a forward and backward pass with DDP's all-reduce ('step'), without it ('compute',
    inside no_sync) and of the all-reduce of as many bytes alone ('allreduce'), every run taking its turn."""
    x, y, mask = batch

    def step(ddp, sync):
        def run():
            ddp.zero_grad(set_to_none=True)
            if sync:
                ddp(x, y, loss_mask=mask)[1].backward()
            else:
                with ddp.no_sync():
                    ddp(x, y, loss_mask=mask)[1].backward()
        return run

    def allreduce(buffer):
        return lambda: dist.all_reduce(buffer)

    runs = {}
    for method, (ddp, nbytes) in models.items():
        runs[f"{method}|step"] = step(ddp, True)
        runs[f"{method}|compute"] = step(ddp, False)
        runs[f"{method}|allreduce"] = allreduce(torch.zeros(nbytes // 4, device=x.device))
    medians = interleaved_times(runs, repeats=repeats, warmup=2, device=x.device)
    out = {}
    for key, seconds in medians.items():
        method, part = key.split("|")
        out.setdefault(method, {})[part] = seconds
    return out


def run_fsdp(rank, world, device, opts, report, tensors):
    method = opts.get("fsdp_method", "lora q,v")
    steps, per_rank = opts.get("steps", D.STEPS), opts.get("batch", D.BATCH)
    model = D.build_model(method, device)
    whole = D.parameter_bytes(model)
    D.shard_with_fsdp2(model, device)
    held = D.parameter_bytes(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.get("lr", D.LR))
    losses = []
    for step in range(steps):
        loss = train_step(model, opt, D.rank_batch(step, per_rank, rank, world, device))
        losses.append(mean_over_ranks(loss.item()))
    report["fsdp"] = {"method": method, "unsharded_bytes": whole, "rank_bytes": held, "losses": losses}
    tensors[f"fsdp/{method}"] = D.trainable_state(model)  # a collective: every rank gathers


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in D.JOBS:
        raise SystemExit(f"usage: python -m lora_teach.distributed_worker JOB OUT_DIR OPTIONS_JSON, JOB one of "
                         f"{D.JOBS}; got {argv}")
    job, out, opts = argv[0], Path(argv[1]), json.loads(argv[2])
    torch.set_num_threads(1)
    rank, world, device = D.init_from_env(timeout=opts.get("collective_timeout", 30))
    report = {"rank": rank, "world_size": world, "backend": dist.get_backend(), "device": str(device), "ddp": {}}
    tensors = {}
    try:
        if job == "hang" and rank == 1:
            time.sleep(3600)
        if job == "fail" and rank == 1:
            raise ValueError("a deliberate failure on rank 1")
        if job in ("ddp", "course"):
            run_ddp(rank, world, device, opts, report, tensors)
        if job in ("fsdp", "course"):
            run_fsdp(rank, world, device, opts, report, tensors)
        dist.barrier()
        report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        (out / f"rank{rank}.json").write_text(json.dumps(report))
        if rank == 0 and tensors:
            D.save_tensors(tensors, out / D.TENSORS)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
