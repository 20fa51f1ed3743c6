"""Graded exercises of notebook 15: beyond one machine (DDP, FSDP, ZeRO)."""

from __future__ import annotations

from .core import check_choice, check_number, right_answer

__all__ = ["check_allreduce_bytes", "check_sharding_for_lora", "check_zero2_gb"]

# LoRA r = 16 on up_proj (128 -> 512) and down_proj (512 -> 128) of the course model's 4 blocks, in float32
UP_DOWN_PARAMETERS = 4 * 2 * 16 * (128 + 512)


@right_answer(lambda: UP_DOWN_PARAMETERS * 4)
def check_allreduce_bytes(answer) -> bool:
    """15: bytes DDP all-reduces per step for LoRA r = 16 on up_proj and down_proj of the course model (fp32)."""
    n = UP_DOWN_PARAMETERS
    return check_number(
        answer, n * 4, name="allreduce_bytes", rel_tol=0,
        mistakes=[(n, "that is the number of trained parameters; each gradient is a float32 of 4 bytes."),
                  (n * 2, "our model trains in float32: 4 bytes a gradient, not 2."),
                  (n * 4 // 2, "each of the two layers has its own A and B: count both."),
                  (n * 8, "the buffer DDP hands to all-reduce holds each gradient once; what the wire carries "
                          "depends on the algorithm, but the hook counts the buffer."),
                  (834_560 * 4, "that is full fine-tuning: with LoRA the frozen base has no gradient to send.")],
        hint="which parameters does DDP all-reduce when only the adapters train? Count one adapted layer's A and B, "
             "then every adapted layer in every block, and the bytes each number takes.",
        explanation="4 blocks x 2 layers x 16 x (128 + 512) = 81,920 adapter parameters, 327,680 bytes a step: "
                    "about a tenth of full fine-tuning's 3,338,240, although up_proj and down_proj are the widest "
                    "layers of the block.")


@right_answer(lambda: "c")
def check_sharding_for_lora(answer) -> bool:
    """15: which sharding shrinks a LoRA fine-tune's memory per GPU the most."""
    return check_choice(
        answer, check_sharding_for_lora.right_answer(), name="sharding_for_lora",
        wrong={"a": "ZeRO-1 splits the optimizer state, and LoRA's optimizer state is already tiny: it holds Adam's "
                    "moments of the adapters only.",
               "b": "SHARD_GRAD_OP adds the gradients, which with LoRA are the adapters' alone: tiny too. The frozen "
                    "weights stay whole on every GPU.",
               "d": "DDP gives every GPU a whole copy: more GPUs add throughput, not room."},
        explanation="with LoRA almost all the memory is the frozen base's weights, and only ZeRO-3 / FULL_SHARD "
                    "splits weights: each GPU holds 1/N of the base plus the block it is computing. That is "
                    "how FSDP-QLoRA fits a 70B model on two 24 GB GPUs.")


def _zero2_gb() -> float:
    psi, n = 13e9, 8
    return (2 * psi + (2 + 12) * psi / n) / 1e9


@right_answer(_zero2_gb)
def check_zero2_gb(answer) -> bool:
    """15: GB of model states per GPU for full fine-tuning of 13B on 8 GPUs with ZeRO-2, mixed-precision Adam."""
    psi, n = 13e9, 8
    return check_number(
        answer, _zero2_gb(), name="zero2_gb",
        mistakes=[(16 * psi / 1e9, "that is every GPU holding everything (DDP): ZeRO-2 splits two of the three "
                                   "parts."),
                  ((4 * psi + 12 * psi / n) / 1e9, "that is ZeRO-1: only the optimizer state split. ZeRO-2 splits "
                                                   "the gradients too."),
                  (16 * psi / n / 1e9, "that is ZeRO-3, which splits the weights too; ZeRO-2 keeps the 16-bit weights "
                                       "whole on every GPU."),
                  (_zero2_gb() * 1e9 / 2**30, "1 GB here is 10^9 bytes; you divided by 2^30.")],
        hint="list the bytes one parameter takes in mixed-precision Adam (weights, gradients, optimizer state), "
             "then which of them ZeRO stage 2 splits across the GPUs and which every GPU keeps whole.",
        explanation="2 x 13e9 + 14 x 13e9 / 8 = 26 + 22.75 = 48.75 GB: more than a 40 GB A100 holds, less than an "
                    "80 GB one. ZeRO-3 would bring it to 26 GB.")
