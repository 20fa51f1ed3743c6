"""How fast is our LoRA? Training step against PEFT's and against full fine-tuning; merged inference
against the base; memory by component. Prints a Markdown table and writes lora_teach/results/lora_performance.json.

    python benchmarks/lora_performance.py            # needs peft (requirements-dev.txt) for the PEFT row

Each pair is timed in alternating rounds (A, B, A, B, ...) so that a slow moment of the machine hits both
sides; each figure is the median over rounds of the median step in the round. Targets: ours/PEFT <= 1.05,
LoRA/full <= 0.75, merged/base <= 1.02.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from lora_teach import author_task, load_base_model
from lora_teach.compare import LM_BLOCK, forward_latency
from lora_teach.data import LanguageModelingTask
from lora_teach.lora import LoRAConfig, apply_lora, merge_and_unload, merge_lora
from lora_teach.measure import activation_memory, step_time, training_memory

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


def alternate(make_a, make_b, measure, rounds: int) -> tuple[float, float]:
    """Median over `rounds` of measure(a) and measure(b), taken in turn."""
    a, b = make_a(), make_b()
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(measure(a))
        tb.append(measure(b))
    return statistics.median(ta), statistics.median(tb)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base_model(device)
    lm = LanguageModelingTask("shakespeare", block_size=LM_BLOCK)
    batch = lm.train_batch(16, torch.Generator().manual_seed(0))  # 16 x 96 characters
    step = lambda m: step_time(m, batch, steps=5, warmup=2)  # noqa: E731
    result = {"threads": torch.get_num_threads(), "batch": "16 x 96 characters (Shakespeare windows)",
              "lora": CONFIG}

    try:
        ours_ms, peft_ms = alternate(lambda: ours(base), lambda: peft_lora(base), step, args.rounds)
        result["train_step_ms"] = {"ours": 1000 * ours_ms, "peft": 1000 * peft_ms, "ratio": ours_ms / peft_ms}
    except ImportError:
        result["train_step_ms"] = {"ours": None, "peft": None, "ratio": None, "note": "peft not installed"}

    lora_ms, full_ms = alternate(lambda: ours(base), lambda: copy.deepcopy(base).requires_grad_(True), step,
                                 args.rounds)
    result["lora_vs_full_step_ms"] = {"lora": 1000 * lora_ms, "full": 1000 * full_ms, "ratio": lora_ms / full_ms}

    task = author_task()
    idx = task.prompts(task.val[:64]).to(device)
    fwd = lambda m: forward_latency(m, idx, repeats=10)  # noqa: E731
    # served: merged and unloaded back to plain nn.Linear layers (what merge_and_unload is for)
    merged_ms, base_ms = alternate(lambda: merge_and_unload(ours(base)), lambda: base, fwd, args.rounds)
    flagged_ms, _ = alternate(lambda: merge_lora(ours(base)), lambda: base, fwd, 3)  # merged, still wrapped
    unmerged_ms, _ = alternate(lambda: ours(base), lambda: base, fwd, 3)
    result["inference_ms"] = {"merged": 1000 * merged_ms, "base": 1000 * base_ms,
                              "merged_wrapped": 1000 * flagged_ms, "unmerged": 1000 * unmerged_ms,
                              "ratio_merged": merged_ms / base_ms, "ratio_merged_wrapped": flagged_ms / base_ms,
                              "ratio_unmerged": unmerged_ms / base_ms}

    memory = {}
    for name, model in (("full", copy.deepcopy(base).requires_grad_(True)), ("lora", ours(base))):
        mem = training_memory(model)
        memory[name] = {k: mem[k] for k in ("weights", "gradients", "optimizer")}
        memory[name]["activations"] = activation_memory(model, batch)
    result["memory_bytes"] = memory

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    s, f, i = result["train_step_ms"], result["lora_vs_full_step_ms"], result["inference_ms"]
    print("| measurement | value | target |\n| --- | --- | --- |")
    if s["ratio"] is not None:
        print(f"| training step, ours / PEFT | {s['ours']:.1f} / {s['peft']:.1f} ms = **{s['ratio']:.3f}** | <= 1.05 |")
    print(f"| training step, LoRA / full fine-tuning | {f['lora']:.1f} / {f['full']:.1f} ms = **{f['ratio']:.3f}** "
          "| <= 0.75 |")
    print(f"| inference, merged LoRA (merge_and_unload) / base | {i['merged']:.2f} / {i['base']:.2f} ms = "
          f"**{i['ratio_merged']:.3f}** | <= 1.02 |")
    print(f"| inference, merged but still wrapped in LoRALinear / base | {i['merged_wrapped']:.2f} / "
          f"{i['base']:.2f} ms = {i['ratio_merged_wrapped']:.3f} | (for reference) |")
    print(f"| inference, unmerged LoRA / base | {i['unmerged']:.2f} / {i['base']:.2f} ms = {i['ratio_unmerged']:.3f} "
          "| (for reference) |")
    for name, mem in memory.items():
        print(f"| memory, {name} (MiB) | " + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in mem.items()) + " | |")
    return result


if __name__ == "__main__":
    main()
