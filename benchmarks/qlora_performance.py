"""How does our QLoRA perform? Bytes of the 4-bit frozen weights, the QLoRA training step against LoRA's on the
fp32 base, and our NF4 dequantisation against bitsandbytes' CPU `dequantize_4bit`. Prints a Markdown table and
writes lora_teach/results/qlora_performance.json. It reports; it asserts nothing about speed.

    python benchmarks/qlora_performance.py            # needs bitsandbytes (requirements-dev.txt) for its row

Set-up: the shipped base model; LoRA r = 8, alpha = 16 on every linear layer of the blocks (QLoRA's setting);
a training step on 16 Shakespeare windows of 128 characters. The two models take turns one step at a time
(`lora_teach.measure.interleaved_times`), and the whole measurement runs `--runs` times with fresh models; each
ratio is the median of the runs' ratios, with their range. "What dominates" is measured too: the time to
dequantise every 4-bit layer of the model once, as a share of the QLoRA step (a step dequantises each layer
twice: in the forward pass and again in the backward pass, as bitsandbytes does).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from lora_teach import load_base_model
from lora_teach.data import LanguageModelingTask
from lora_teach.lora import LoRAConfig, apply_lora
from lora_teach.measure import interleaved_times, training_step
from lora_teach.quantize import NF4Linear, bits_per_weight, nf4_dequantize, quantize_model, quantized_bytes

OUT = Path(__file__).resolve().parents[1] / "lora_teach" / "results" / "qlora_performance.json"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
CONFIG = LoRAConfig(r=8, alpha=16, target_modules=TARGETS)


def bytes_report(base) -> dict:
    """Bytes of the quantised linear weights (codes + constants) against the same weights in fp32."""
    counts = quantized_bytes(quantize_model(copy.deepcopy(base)))
    stored = counts["codes"] + counts["constants"]
    return {**counts, "ratio_linear": stored / counts["weights_fp32"],
            "ratio_whole_model": (stored + counts["other"]) / (counts["weights_fp32"] + counts["other"]),
            "bits_per_weight": bits_per_weight()}


def step_times(base, batch, repeats: int) -> dict:
    """Median seconds of a LoRA step (fp32 base) and a QLoRA step (NF4 base), taking turns; and of dequantising
    every NF4 layer of the QLoRA model once."""
    lora = apply_lora(copy.deepcopy(base), CONFIG)
    qlora = apply_lora(quantize_model(copy.deepcopy(base)), CONFIG)
    nf4_layers = [m for m in qlora.modules() if isinstance(m, NF4Linear)]

    def dequantise_all():
        with torch.no_grad():
            for m in nf4_layers:
                m.weight  # noqa: B018  (the property dequantises)

    t = interleaved_times({"lora": training_step(lora, batch), "qlora": training_step(qlora, batch),
                           "dequantise_all": dequantise_all}, repeats=repeats)
    return t


def dequantize_times(base, repeats: int) -> dict | None:
    """Median seconds of our nf4_dequantize and bitsandbytes' dequantize_4bit on the same packed tensors (every
    linear weight of the model, fp32 constants), taking turns; None without bitsandbytes."""
    try:
        import bitsandbytes.functional as bnb_f
    except ImportError:
        return None
    weights = [m.weight.detach() for m in base.modules() if isinstance(m, torch.nn.Linear)]
    quantised = [bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4") for w in weights]
    ours_in = [(p.reshape(-1), s.absmax, w.shape) for (p, s), w in zip(quantised, weights, strict=True)]
    for (p, a, shape), (bp, state) in zip(ours_in, quantised, strict=True):  # the same numbers, bit for bit
        assert torch.equal(nf4_dequantize(p, a, shape), bnb_f.dequantize_4bit(bp, state))

    def ours():
        for p, a, shape in ours_in:
            nf4_dequantize(p, a, shape)

    def theirs():
        for p, state in quantised:
            bnb_f.dequantize_4bit(p, state)

    return interleaved_times({"ours": ours, "bitsandbytes": theirs}, repeats=repeats)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40, help="timed steps (and dequantisations) per model and run")
    ap.add_argument("--runs", type=int, default=3, help="independent runs, each with freshly built models")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    base = load_base_model("cpu")
    batch = LanguageModelingTask("shakespeare").train_batch(16, torch.Generator().manual_seed(0))
    runs = []
    for _ in range(args.runs):
        steps = step_times(base, batch, args.repeats)
        deq = dequantize_times(base, args.repeats)
        runs.append({"steps_s": steps, "dequantize_s": deq})

    def spread(values):
        return statistics.median(values), [min(values), max(values)]

    step_ratio, step_range = spread([r["steps_s"]["qlora"] / r["steps_s"]["lora"] for r in runs])
    share, share_range = spread([2 * r["steps_s"]["dequantise_all"] / r["steps_s"]["qlora"] for r in runs])
    result = {
        "config": {"r": CONFIG.r, "alpha": CONFIG.alpha, "target_modules": list(TARGETS), "batch": [16, 128],
                   "repeats": args.repeats, "runs": args.runs, "torch": torch.__version__},
        "bytes": bytes_report(base),
        "step_ms": {"lora": 1000 * statistics.median(r["steps_s"]["lora"] for r in runs),
                    "qlora": 1000 * statistics.median(r["steps_s"]["qlora"] for r in runs),
                    "ratio_qlora_lora": step_ratio, "range": step_range,
                    "dequantise_twice_share_of_qlora_step": share, "share_range": share_range},
        "runs": runs,
    }
    if runs[0]["dequantize_s"] is not None:
        ratio, rng = spread([r["dequantize_s"]["ours"] / r["dequantize_s"]["bitsandbytes"] for r in runs])
        result["dequantize_ms"] = {"ours": 1000 * statistics.median(r["dequantize_s"]["ours"] for r in runs),
                                   "bitsandbytes": 1000 * statistics.median(r["dequantize_s"]["bitsandbytes"]
                                                                            for r in runs),
                                   "ratio_ours_bitsandbytes": ratio, "range": rng}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    """docs/PERFORMANCE.md's table of this benchmark."""
    b, s = result["bytes"], result["step_ms"]
    rows = [("frozen linear weights, NF4 (codes + constants) / fp32",
             f"{b['codes'] + b['constants']:,} / {b['weights_fp32']:,} bytes = **{b['ratio_linear']:.3f}**", "<= 0.14"),
            ("whole model (embeddings, norms, biases stay fp32) / fp32", f"{b['ratio_whole_model']:.3f}",
             "for reference"),
            ("training step, QLoRA / LoRA (fp32 base)", f"{s['qlora']:.1f} / {s['lora']:.1f} ms = "
             f"**{s['ratio_qlora_lora']:.2f}** ({s['range'][0]:.2f}-{s['range'][1]:.2f})", "report"),
            ("dequantising every layer twice, share of the QLoRA step",
             f"{s['dequantise_twice_share_of_qlora_step']:.2f} ({s['share_range'][0]:.2f}-{s['share_range'][1]:.2f})",
             "what dominates")]
    if "dequantize_ms" in result:
        d = result["dequantize_ms"]
        rows.append(("NF4 dequantisation, ours / bitsandbytes `dequantize_4bit` (CPU)",
                     f"{d['ours']:.2f} / {d['bitsandbytes']:.2f} ms = **{d['ratio_ours_bitsandbytes']:.2f}** "
                     f"({d['range'][0]:.2f}-{d['range'][1]:.2f})", "report"))
    lines = ["| measurement | value | target |", "| --- | --- | --- |"]
    lines += [f"| {a} | {v} | {t} |" for a, v, t in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
