"""Graded exercises of notebook 14: fine-tuning like a practitioner."""

from __future__ import annotations

from .core import check_choice, check_number, right_answer

__all__ = ["check_loss_tokens", "check_bnb_defaults", "check_reference_copy_gb"]

QWEN_7B_PARAMETERS = 7_615_616_512  # Qwen2.5-7B (lora_teach.memory.REAL_MODELS["qwen2.5-7b"])


@right_answer(lambda: 9)
def check_loss_tokens(answer) -> bool:
    """14: how many tokens of the course conversation whose answer is 'question' carry loss."""
    return check_number(
        answer, check_loss_tokens.right_answer(), name="loss_tokens", rel_tol=0,
        mistakes=[(8, "the end-of-turn token <|end|> sits inside {% generation %} too, and it must carry loss: it is "
                      "how the model learns to stop."),
                  (10, "<|assistant|> is written before {% generation %}: it belongs to the prompt, which carries "
                       "no loss (generation starts right after it)."),
                  (11, "only what is inside {% generation %} carries loss: the answer and its <|end|>; <|assistant|> "
                       "and the user's turn do not.")],
        hint="our tokenizer makes one token of each character, and each special token is one token; count what "
             "lies between {% generation %} and {% endgeneration %}.",
        explanation="the 8 characters of 'question' and its <|end|>: 9 tokens. The question, the passage and the "
                    "role tokens are read, never trained on; without <|end|> in the loss the model would not learn "
                    "to stop.")


@right_answer(lambda: "b")
def check_bnb_defaults(answer) -> bool:
    """14: what BitsAndBytesConfig(load_in_4bit=True) alone gives in transformers 5."""
    return check_choice(
        answer, check_bnb_defaults.right_answer(), name="bnb_defaults",
        wrong={"a": "that is QLoRA's recipe, but none of it is the default: each of the three settings must be "
                    "written out (the first cell of the QLoRA section printed the defaults).",
               "c": "the quant type defaults to 'fp4', not 'nf4', and the compute dtype to float32.",
               "d": "load_in_4bit gives 4-bit weights; 8 bits is load_in_8bit (LLM.int8), another method."},
        explanation="quant type 'fp4', no double quantisation, float32 compute. So a config that names only "
                    "load_in_4bit silently trains on FP4 instead of NF4, keeps the constants in 32 bits, and "
                    "computes slowly on a GPU: write all four settings.")


def _nf4_copy_gb() -> float:
    from ..memory import NF4_BITS

    return QWEN_7B_PARAMETERS * NF4_BITS / 8 / 1e9


@right_answer(_nf4_copy_gb)
def check_reference_copy_gb(answer) -> bool:
    """14: GB of a separate reference copy of Qwen2.5-7B for DPO, stored in NF4 with double quantisation."""
    n = QWEN_7B_PARAMETERS
    return check_number(
        answer, _nf4_copy_gb(), name="reference_copy_gb",
        mistakes=[(n * 2 / 1e9, "that is the copy in bf16 (the cell above printed it); the question stores it in "
                                "NF4."),
                  (n * 4 / 8 / 1e9, "4 bits is the code alone: each weight also carries its share of the block "
                                    "constants, 4.127 bits in all with double quantisation."),
                  (n * 4.5 / 8 / 1e9, "4.5 bits is NF4 with fp32 block constants; double quantisation stores them in "
                                      "8 bits: 4.127 bits a weight."),
                  (_nf4_copy_gb() * 1e9 / 2**30, "1 GB here is 10^9 bytes; you divided by 2^30.")],
        hint="a frozen copy holds only its weights: how many bits does one weight take in NF4 with double "
             "quantisation? Turn the model's bits into GB (10^9 bytes).",
        explanation="about 3.93 GB: 4 bits cut the copy to a quarter of its bf16 size, but it still costs memory "
                    "for a model that is never trained. With a LoRA policy, TRL switches the adapter off and the "
                    "reference costs nothing.")
