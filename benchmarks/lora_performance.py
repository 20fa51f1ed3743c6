"""How fast is our LoRA? Training step against PEFT's and against full fine-tuning; merged inference
against the base; memory by component. Prints a Markdown table and writes lora_teach/results/lora_performance.json.

    python benchmarks/lora_performance.py            # needs peft (requirements-dev.txt) for the PEFT row

The models being compared take turns, one training step (or one forward pass) at a time, with the order
rotating (`lora_teach.measure.interleaved_times`): a slow moment of a shared machine then falls on all of them
alike, and the ratios of the medians hold steady from run to run. Targets: ours/PEFT <= 1.05, LoRA/full <= 0.75,
merged/base <= 1.02.

Reference rows explain the LoRA/full ratio. "No weight gradients" trains a single bias in the first layer:
every layer still runs its backward pass for the input gradient but computes no weight gradient, the floor any
method that keeps the weights frozen pays. "LoRA minus the floor" is what LoRA's factors themselves cost, as a
share of a full step; it moves less with the machine's state than the ratio does (docs/PERFORMANCE.md). A stand-in model
twice as wide (d = 256, random weights) shows how the ratio depends on the shape: the share of the step that
LoRA removes grows with d.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from lora_teach import author_task, load_base_model
from lora_teach.compare import LM_BLOCK, served_forward
from lora_teach.data import LanguageModelingTask
from lora_teach.lora import LoRAConfig, apply_lora, merge_and_unload, merge_lora
from lora_teach.measure import activation_memory, interleaved_times, training_memory, training_step
from lora_teach.model import GPT, GPTConfig

OUT = Path(__file__).resolve().parents[1] / "lora_teach" / "results" / "lora_performance.json"
CONFIG = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def ours(base):
    return apply_lora(copy.deepcopy(base), LoRAConfig(r=CONFIG["r"], alpha=CONFIG["alpha"],
                                                      target_modules=tuple(CONFIG["target_modules"])))


def peft_lora(base):
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=CONFIG["r"], lora_alpha=CONFIG["alpha"],
                                               target_modules=CONFIG["target_modules"]), copy.deepcopy(base))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def frozen_but_one_bias(base):
    """Every weight frozen except the first layer's q_proj bias: the backward pass runs through every layer
    (for the input gradients) but computes no weight gradient."""
    model = copy.deepcopy(base).requires_grad_(False)
    model.blocks[0].attn.q_proj.bias.requires_grad_(True)
    return model


def timings(base, batch, idx, repeats: int, device) -> dict:
    """One measurement, in ms: every training step and every served forward pass, the models taking turns."""
    models = {"ours": ours(base), "full": copy.deepcopy(base).requires_grad_(True),
              "no_weight_gradients": frozen_but_one_bias(base)}
    try:
        models["peft"] = peft_lora(base)
    except ImportError:
        pass
    steps = {name: training_step(model, batch) for name, model in models.items()}
    out = {f"step_{k}": 1000 * v for k, v in interleaved_times(steps, repeats=repeats, device=device).items()}
    wide = GPT(GPTConfig(n_embd=256, n_head=4)).to(device)  # a stand-in twice as wide, random weights
    wide_steps = {"lora": training_step(ours(wide), batch), "full": training_step(wide, batch)}
    out.update({f"step_d256_{k}": 1000 * v for k, v in
                interleaved_times(wide_steps, repeats=max(1, repeats // 3), device=device).items()})
    served = {"base": base, "merged": merge_and_unload(ours(base)),  # plain nn.Linear layers again
              "merged_wrapped": merge_lora(ours(base)), "unmerged": ours(base)}
    fwd = interleaved_times({k: served_forward(m, idx) for k, m in served.items()}, repeats=repeats, device=device)
    out.update({f"forward_{k}": 1000 * v for k, v in fwd.items()})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=60, help="timed steps (and forward passes) per model and run")
    ap.add_argument("--runs", type=int, default=3, help="independent runs, each with freshly built models")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base_model(device)
    lm = LanguageModelingTask("shakespeare", block_size=LM_BLOCK)
    batch = lm.train_batch(16, torch.Generator().manual_seed(0))  # 16 x 96 characters
    task = author_task()
    idx = task.prompts(task.val[:64]).to(device)
    runs = [timings(base, batch, idx, args.repeats, device) for _ in range(args.runs)]

    def ms(key):  # the median over runs
        return statistics.median(r[key] for r in runs) if all(key in r for r in runs) else None

    def spread(values):  # the median of per-run values, and their range
        values = sorted(values)
        return statistics.median(values), values[0], values[-1]

    def ratio(a, b):  # the median over runs of the ratio within a run, and its range
        return spread(r[a] / r[b] for r in runs) if all(a in r for r in runs) else (None, None, None)

    result = {"threads": torch.get_num_threads(), "batch": "16 x 96 characters (Shakespeare windows)",
              "lora": CONFIG, "repeats": args.repeats, "runs": runs}
    r, lo, hi = ratio("step_ours", "step_peft")
    result["train_step_ms"] = {"ours": ms("step_ours"), "peft": ms("step_peft"), "ratio": r, "range": [lo, hi]}
    r, lo, hi = ratio("step_ours", "step_full")
    result["lora_vs_full_step_ms"] = {"lora": ms("step_ours"), "full": ms("step_full"), "ratio": r, "range": [lo, hi],
                                      "no_weight_gradients": ms("step_no_weight_gradients"),
                                      "ratio_no_weight_gradients": ratio("step_no_weight_gradients", "step_full")[0]}
    r, lo, hi = spread((run["step_ours"] - run["step_no_weight_gradients"]) / run["step_full"] for run in runs)
    result["lora_vs_full_step_ms"].update(above_floor=r, above_floor_range=[lo, hi])  # LoRA's own share of a step
    r, lo, hi = ratio("step_d256_lora", "step_d256_full")
    result["lora_vs_full_step_ms_d256"] = {"lora": ms("step_d256_lora"), "full": ms("step_d256_full"), "ratio": r,
                                           "range": [lo, hi]}
    result["inference_ms"] = {k: ms(f"forward_{k}") for k in ("base", "merged", "merged_wrapped", "unmerged")}
    for k in ("merged", "merged_wrapped", "unmerged"):
        r, lo, hi = ratio(f"forward_{k}", "forward_base")
        result["inference_ms"][f"ratio_{k}"], result["inference_ms"][f"range_{k}"] = r, [lo, hi]

    memory = {}
    for name, model in (("full", copy.deepcopy(base).requires_grad_(True)), ("lora", ours(base))):
        mem = training_memory(model)
        memory[name] = {k: mem[k] for k in ("weights", "gradients", "optimizer")}
        memory[name]["activations"] = activation_memory(model, batch)
    result["memory_bytes"] = memory

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(result))
    print(memory_line(result))
    return result


def markdown_table(result: dict) -> str:
    """docs/PERFORMANCE.md's performance table, from a result of `main` (or the JSON file it writes)."""
    s, f, i = result["train_step_ms"], result["lora_vs_full_step_ms"], result["inference_ms"]
    w = result["lora_vs_full_step_ms_d256"]

    def span(r):
        return f"({r[0]:.3f}-{r[1]:.3f})"

    rows = ["| measurement | value | target |", "| --- | --- | --- |"]
    if s["ratio"] is not None:
        rows.append(f"| training step, ours / PEFT | {s['ours']:.1f} / {s['peft']:.1f} ms = **{s['ratio']:.3f}** "
                    f"{span(s['range'])} | <= 1.05 |")
    rows += [
        f"| training step, LoRA / full fine-tuning | {f['lora']:.1f} / {f['full']:.1f} ms = **{f['ratio']:.3f}** "
        f"{span(f['range'])} | <= 0.75 |",
        f"| training step, no weight gradients at all / full fine-tuning | {f['no_weight_gradients']:.1f} / "
        f"{f['full']:.1f} ms = {f['ratio_no_weight_gradients']:.3f} | the floor |",
        f"| training step, LoRA minus the floor, as a share of a full step | {f['above_floor']:.3f} "
        f"{span(f['above_floor_range'])} | LoRA's own cost |",
        f"| training step, LoRA / full, a stand-in with d = 256 (random weights) | {w['lora']:.1f} / "
        f"{w['full']:.1f} ms = {w['ratio']:.3f} {span(w['range'])} | for reference |",
        f"| inference, merged LoRA (`merge_and_unload`) / base | {i['merged']:.1f} / {i['base']:.1f} ms = "
        f"**{i['ratio_merged']:.3f}** {span(i['range_merged'])} | <= 1.02 |",
        f"| inference, merged but still wrapped in `LoRALinear` / base | {i['merged_wrapped']:.1f} / "
        f"{i['base']:.1f} ms = {i['ratio_merged_wrapped']:.3f} {span(i['range_merged_wrapped'])} | for reference |",
        f"| inference, unmerged LoRA / base | {i['unmerged']:.1f} / {i['base']:.1f} ms = {i['ratio_unmerged']:.3f} "
        f"{span(i['range_unmerged'])} | for reference |",
    ]
    return "\n".join(rows)



def memory_line(result: dict) -> str:
    """docs/PERFORMANCE.md's memory sentence: MiB by component for full fine-tuning and for LoRA."""
    def parts(mem):
        names = {"weights": "weights", "gradients": "gradients", "optimizer": "Adam", "activations": "activations"}
        return ", ".join(f"{names[k]} {mem[k] / 2**20:.2f}" for k in names)
    memory = result["memory_bytes"]
    return f"full fine-tuning: {parts(memory['full'])};\nLoRA: {parts(memory['lora'])}"


if __name__ == "__main__":
    main()
