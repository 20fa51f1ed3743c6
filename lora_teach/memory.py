"""Training memory as practitioners count it: bytes per parameter by precision mode, LoRA and QLoRA, activations.

Weights, gradients and optimizer state are counted per parameter; every mode states its bytes:

    fp32        fp32 weights, gradients and both Adam moments                         4 + 4 + 8     = 16 B
    bf16-mixed  bf16 weights and gradients; fp32 master weights and moments (ZeRO)    2 + 2 + 4 + 8 = 16 B
    bf16, fp16  pure 16 bit: weights, gradients and both moments in 16 bits           2 + 2 + 4     =  8 B
    adam-8bit   bf16 mixed precision with 8-bit Adam moments (bitsandbytes)           2 + 2 + 4 + 2 = 10 B
    qlora       a frozen NF4 base (4.127 bits a weight with double quantisation); the adapters in bf16 with
                bf16 gradients and 32-bit Adam moments, as QLoRA's reference code trains them  2 + 2 + 8 = 12 B

As in the ZeRO paper (Rajbhandari et al., 2020), "optimizer state" holds the fp32 master weights and the
moments. A frozen parameter costs only its weight. Activations depend on the batch, not on the parameters, so
they are a separate line (`activation_estimate`), with gradient checkpointing as an option; its formula is
stated there. Model sizes: `MODEL_SIZES` (the course's tiny GPT to GPT-3 175B) and `REAL_MODELS` (Llama-3-8B,
Qwen2.5-1.5B and 7B, Mistral-7B, with their vocabularies). `fine_tuning_memory` and `fit_table` count a training
step as practitioners run it on a GPU (logits and PEFT's fp32 adapters included) and say which of `GPUS` it fits.
Across several GPUs: `sharded_memory` splits the model states as ZeRO's stages do (FSDP's SHARD_GRAD_OP is stage 2,
FULL_SHARD stage 3), with CPU offload as an option, and `gpus_needed` finds the fewest GPUs of a kind that hold a
fine-tune; `zero_paper_figure1` and `fsdp_qlora_70b` set them beside the ZeRO paper and Answer.AI's FSDP-QLoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from .measure import OPTIMIZER_STATES


# ------------------------------------------------------------------------------------------------ model sizes
@dataclass(frozen=True)
class ModelSize:
    """What the arithmetic needs of a model: its parameter count, its blocks' linear layers (in, out) and widths."""

    name: str
    n_params: int
    n_layer: int
    linears: dict  # module name -> (in_features, out_features), per block
    d_model: int
    n_head: int
    note: str = ""
    context: int = 2048  # the sequence length its activations line uses
    vocab: int = 0  # tokens in its vocabulary: one logit each per position (0: not recorded)

    @property
    def block_linear_params(self) -> int:
        """Weights of all linear layers of all blocks (what QLoRA stores in 4 bits)."""
        return self.n_layer * sum(i * o for i, o in self.linears.values())


def gpt_parameters(n_layer: int, d: int, vocab: int, context: int, tied: bool = True) -> int:
    """Parameters of a GPT-2-style model: per block 12 d^2 weights + 13 d biases and norms; embeddings."""
    per_block = 12 * d * d + 13 * d  # q,k,v,o (4 d^2) and MLP d -> 4d -> d (8 d^2); biases 9d; two norms 4d
    head = 0 if tied else vocab * d
    return n_layer * per_block + vocab * d + context * d + 2 * d + head


def llama_parameters(n_layer: int, d: int, d_ff: int, vocab: int, d_kv: int | None = None, *,
                     qkv_bias: bool = False, tied: bool = False) -> int:
    """Parameters of a LLaMA-style model (gated MLP, RMSNorm; d_kv < d for GQA). By default no biases and an
    untied head; Qwen2.5 has biases on q, k and v (`qkv_bias`), and its small models tie the head (`tied`)."""
    d_kv = d if d_kv is None else d_kv
    per_block = 2 * d * d + 2 * d * d_kv + 3 * d * d_ff + 2 * d + (d + 2 * d_kv if qkv_bias else 0)
    return n_layer * per_block + (1 if tied else 2) * vocab * d + d


def _gpt_linears(d: int) -> dict:
    return {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "o_proj": (d, d),
            "up_proj": (d, 4 * d), "down_proj": (4 * d, d)}


def _llama_linears(d: int, d_ff: int, d_kv: int) -> dict:
    return {"q_proj": (d, d), "k_proj": (d, d_kv), "v_proj": (d, d_kv), "o_proj": (d, d),
            "gate_proj": (d, d_ff), "up_proj": (d, d_ff), "down_proj": (d_ff, d)}


MODEL_SIZES = {
    "tiny": ModelSize("this course's tiny GPT", gpt_parameters(4, 128, 97, 128, tied=False), 4, _gpt_linears(128),
                      128, 4, "4 blocks, d = 128, untied head", 128, vocab=97),
    "gpt2": ModelSize("GPT-2 small (124 M)", gpt_parameters(12, 768, 50257, 1024), 12, _gpt_linears(768), 768, 12,
                      "12 blocks, d = 768", 1024, vocab=50257),
    "7b": ModelSize("LLaMA-2 7B", llama_parameters(32, 4096, 11008, 32000), 32, _llama_linears(4096, 11008, 4096),
                    4096, 32, "32 blocks, d = 4096", 4096, vocab=32000),
    "65b": ModelSize("LLaMA 65B", llama_parameters(80, 8192, 22016, 32000), 80, _llama_linears(8192, 22016, 8192),
                     8192, 64, "80 blocks, d = 8192 (QLoRA's largest model)", vocab=32000),
    "70b": ModelSize("LLaMA-2 70B", llama_parameters(80, 8192, 28672, 32000, d_kv=1024), 80,
                     _llama_linears(8192, 28672, 1024), 8192, 64, "80 blocks, d = 8192, grouped-query attention", 4096,
                     vocab=32000),
    "gpt3-175b": ModelSize("GPT-3 175B", gpt_parameters(96, 12288, 50257, 2048), 96, _gpt_linears(12288), 12288, 96,
                           "96 blocks, d = 12288", vocab=50257),
}
# Real models a learner fine-tunes today, from their published configs (parameter counts as their model cards give
# them: 8.03 B, 1.54 B, 7.61 B, 7.24 B). Not in MODEL_SIZES, whose models notebook 09's calculator offers.
REAL_MODELS = {
    "llama-3-8b": ModelSize("Llama-3-8B", llama_parameters(32, 4096, 14336, 128256, d_kv=1024), 32,
                            _llama_linears(4096, 14336, 1024), 4096, 32,
                            "32 blocks, d = 4096, grouped-query attention, 128,256 tokens", 8192, vocab=128256),
    "qwen2.5-1.5b": ModelSize("Qwen2.5-1.5B",
                              llama_parameters(28, 1536, 8960, 151936, d_kv=256, qkv_bias=True, tied=True), 28,
                              _llama_linears(1536, 8960, 256), 1536, 12,
                              "28 blocks, d = 1536, tied head, 151,936 tokens", 32768, vocab=151936),
    "qwen2.5-7b": ModelSize("Qwen2.5-7B", llama_parameters(28, 3584, 18944, 152064, d_kv=512, qkv_bias=True), 28,
                            _llama_linears(3584, 18944, 512), 3584, 28, "28 blocks, d = 3584, 152,064 tokens", 32768,
                            vocab=152064),
    "mistral-7b": ModelSize("Mistral-7B", llama_parameters(32, 4096, 14336, 32000, d_kv=1024), 32,
                            _llama_linears(4096, 14336, 1024), 4096, 32,
                            "32 blocks, d = 4096, grouped-query attention, 32,000 tokens", 32768, vocab=32000),
}
TARGET_SETS = {
    "q,v": ("q_proj", "v_proj"),
    "q,k,v,o": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all linear": None,  # every linear layer of a block
}
METHODS = ("full", "lora")


def lora_parameters(model: ModelSize, r: int, targets=("q_proj", "v_proj")) -> int:
    """Trainable parameters of LoRA: r (in + out) for every targeted linear layer of every block."""
    return model.n_layer * sum(r * (i + o) for i, o in (model.linears[t] for t in targets))


# ---------------------------------------------------------------------------------------------- precision
# an NF4 code, an 8-bit constant per 64 weights, an fp32 constant per 64 * 256 (= quantize.bits_per_weight())
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of one precision mode. `optimizer` = fp32 master copy + both Adam moments (ZeRO)."""

    key: str
    weight: float  # the trained weights as the forward pass uses them
    gradient: float
    master: float  # fp32 master copy of the trained weights (mixed precision), 0 if none
    moments: float  # Adam's two moments together
    base_bits: float  # a frozen base weight of a LoRA model, in bits
    description: str

    @property
    def per_trained_parameter(self) -> float:
        return self.weight + self.gradient + self.master + self.moments


PRECISIONS = {
    "fp32": Precision("fp32", 4, 4, 0, 8, 32, "fp32 weights, gradients and Adam moments: 4 + 4 + 8 = 16 bytes "
                      "per trained parameter"),
    "bf16-mixed": Precision("bf16-mixed", 2, 2, 4, 8, 16, "bf16 mixed precision: bf16 weights and gradients, fp32 "
                            "master weights and Adam moments (as ZeRO counts): 2 + 2 + 4 + 8 = 16 bytes"),
    "bf16": Precision("bf16", 2, 2, 0, 4, 16, "pure bf16: weights, gradients and Adam moments all in 16 bits: "
                      "2 + 2 + 4 = 8 bytes"),
    "fp16": Precision("fp16", 2, 2, 0, 4, 16, "pure fp16 (the LoRA paper's era): weights, gradients and Adam "
                      "moments all in 16 bits: 2 + 2 + 4 = 8 bytes"),
    "adam-8bit": Precision("adam-8bit", 2, 2, 4, 2, 16, "bf16 mixed precision with 8-bit Adam (bitsandbytes): "
                           "2 + 2 + 4 + 1 + 1 = 10 bytes"),
    "qlora": Precision("qlora", 2, 2, 0, 8, NF4_BITS, "QLoRA: a frozen NF4 base with double quantisation "
                       f"({NF4_BITS:.3f} bits a weight); bf16 adapters and gradients, 32-bit Adam moments: "
                       "2 + 2 + 8 = 12 bytes per adapter parameter"),
}
BASE_BITS = {32: 32, 16: 16, 8: 8, 4: NF4_BITS}  # a frozen base layer's weight; 4 means NF4 with its constants


def _resolve_model(model) -> ModelSize:
    if isinstance(model, ModelSize):
        return model
    known = {**MODEL_SIZES, **REAL_MODELS}
    if model not in known:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(known)} or pass a ModelSize")
    return known[model]


def _resolve_targets(model: ModelSize, targets) -> tuple[str, ...]:
    if isinstance(targets, str):
        if targets not in TARGET_SETS:
            raise ValueError(f"unknown target set {targets!r}; choose one of {list(TARGET_SETS)} or name modules")
        targets = TARGET_SETS[targets] or tuple(model.linears)
    targets = tuple(targets)
    unknown = [t for t in targets if t not in model.linears]
    if not targets or unknown:
        raise ValueError(f"target modules {unknown or targets} are not linear layers of {model.name}; "
                         f"choose from {list(model.linears)}")
    return targets


def memory_estimate(model="gpt3-175b", method: str = "lora", r: int = 4, targets="q,v", precision: str = "fp16",
                    optimizer: str = "adamw", base_bits: int | None = None) -> dict:
    """Training memory (weights, gradients, optimizer state; activations apart) and checkpoint bytes.

    Full fine-tuning trains every parameter at `precision`'s bytes. LoRA trains A and B at those bytes; the
    frozen base costs its weight only: the blocks' linear layers at `base_bits` (default: the mode's, 4 = NF4
    with constants) and the rest (embeddings, norms, head) in the mode's weight width. Checkpoint: the whole
    model for full fine-tuning, only A and B for LoRA, in the weights' width."""
    model = _resolve_model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATES)}, got {optimizer!r}")
    if base_bits is not None and base_bits not in BASE_BITS:
        raise ValueError(f"base_bits must be None (the precision's own) or one of {list(BASE_BITS)}, got {base_bits!r}")
    mode = PRECISIONS[precision]
    bits = mode.base_bits if base_bits is None else BASE_BITS[base_bits]
    if method == "full" and (base_bits is not None or precision == "qlora"):
        raise ValueError("full fine-tuning trains every weight, so there is no frozen base to store in fewer bits; "
                         "use method='lora' with base_bits or precision='qlora'")
    if method == "lora":
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"r (the rank) must be a positive int, got {r!r}")
        targets = _resolve_targets(model, targets)
        trainable = lora_parameters(model, r, targets)
        frozen_linear = model.block_linear_params
        frozen_other = model.n_params - frozen_linear
        frozen_bytes = frozen_linear * bits / 8 + frozen_other * mode.weight
        total_params = model.n_params + trainable
    else:
        targets, trainable, frozen_bytes, total_params, bits = (), model.n_params, 0, model.n_params, None
    moments = mode.moments * OPTIMIZER_STATES[optimizer] / 2  # the mode's bytes are for Adam's two moments
    weights = frozen_bytes + trainable * mode.weight
    gradients = trainable * mode.gradient
    states = trainable * (mode.master + moments)
    return {"model": model.name, "method": method, "r": r if method == "lora" else None, "targets": targets,
            "precision": precision, "base_bits": bits, "trainable": trainable, "total_parameters": total_params,
            "weights": weights, "gradients": gradients, "optimizer": states, "master": trainable * mode.master,
            "total": weights + gradients + states, "checkpoint": trainable * mode.weight}


def weight_bytes(model, bits: float) -> float:
    """Bytes of all of a model's parameters stored at `bits` each (e.g. 16, 8, or 4.127 for NF4)."""
    return _resolve_model(model).n_params * bits / 8


def format_bytes(n: float) -> str:
    """Bytes in decimal units, as the LoRA paper writes them: 350 GB, 35 MB, 1.2 TB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------------------------------------- activations
ACTIVATION_ASSUMPTIONS = ("activations in 16 bits, per block s b d (34 + 5 a s / d) bytes (Korthikanti et al., 2022: "
                          "GPT block with dropout, attention scores stored, no sequence or tensor parallelism); "
                          "with gradient checkpointing, each block's input (2 s b d bytes) plus one block recomputed "
                          "at a time")


def activation_estimate(model, batch: int, seq: int, checkpointing: bool = False) -> float:
    """Bytes of activations of one training step: see ACTIVATION_ASSUMPTIONS (the same for full fine-tuning and
    LoRA: every layer still runs its backward pass)."""
    model = _resolve_model(model)
    for name, value in (("batch", batch), ("seq", seq)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(checkpointing, bool):
        raise TypeError(f"checkpointing must be True or False, got {checkpointing!r}")
    s, b, d, a = seq, batch, model.d_model, model.n_head
    per_block = s * b * d * (34 + 5 * a * s / d)
    if checkpointing:
        return model.n_layer * 2 * s * b * d + per_block
    return model.n_layer * per_block


# ------------------------------------------------------------------------------------- the papers' figures
def lora_paper_gpt3() -> dict:
    """The LoRA paper's GPT-3 175B figures (training memory 1.2 TB -> 350 GB, checkpoint 350 GB -> 35 MB, Adam,
    r = 4 on W_q and W_v) beside this module's arithmetic. The paper's "up to 2/3 less, as we do not store
    optimizer states for frozen parameters" fits pure 16-bit training (fp16 mode): LoRA keeps the 16-bit
    weights (349 GB); full fine-tuning holds 16-bit weights and two moments (1.05 TB), plus 16-bit gradients
    (1.4 TB). The paper's 1.2 TB lies between; it does not itemise it."""
    full = memory_estimate("gpt3-175b", "full", precision="fp16")
    lora = memory_estimate("gpt3-175b", "lora", r=4, targets="q,v", precision="fp16")
    mixed = memory_estimate("gpt3-175b", "full", precision="bf16-mixed")
    return {"paper_full": 1.2e12, "paper_lora": 350e9, "paper_checkpoint_lora": 35e6,
            "full_weights_and_moments": full["weights"] + full["optimizer"], "full_total": full["total"],
            "lora_total": lora["total"], "full_checkpoint": full["checkpoint"], "lora_checkpoint": lora["checkpoint"],
            "full_mixed_precision": mixed["total"], "trainable_ratio": full["trainable"] / lora["trainable"]}


def qlora_paper_65b(batch: int = 1, seq: int = 512) -> dict:
    """QLoRA's headline (65B on one 48 GB GPU, against more than 780 GB for 16-bit full fine-tuning) under stated
    assumptions: LLaMA 65B, LoRA r = 64 on all linear layers of the blocks (the paper's setting), precision
    'qlora'; activations of `batch` sequences of `seq` tokens with gradient checkpointing. Full 16-bit fine-tuning:
    16-bit weights and gradients with 32-bit Adam moments (12 bytes a parameter), or 16 with fp32 master weights."""
    qlora = memory_estimate("65b", "lora", r=64, targets="all linear", precision="qlora")
    n = MODEL_SIZES["65b"].n_params
    act = activation_estimate("65b", batch, seq, checkpointing=True)
    return {"paper_qlora_below": 48e9, "paper_full_above": 780e9, "n_params": n, "qlora": qlora,
            "qlora_total": qlora["total"], "activations_checkpointed": act,
            "qlora_with_activations": qlora["total"] + act, "full_16bit_12_bytes": 12 * n,
            "full_mixed_16_bytes": memory_estimate("65b", "full", precision="bf16-mixed")["total"]}


# ------------------------------------------------------------------------------------ what fits on which GPU
GPUS = {"T4 16 GB": 16e9, "L4 24 GB": 24e9, "A100 40 GB": 40e9, "A100 80 GB": 80e9}  # nominal memory, bytes
GPU_KINDS = {**GPUS, "RTX 3090/4090 24 GB": 24e9, "H100 80 GB": 80e9}  # GPUS (the fit table's) and two more
GPU_RESERVED = 1e9  # kept free on every GPU: the CUDA context, its kernels and the allocator's slack
LOGIT_BYTES = 8  # per logit of a training step: the fp32 logits the loss reads and their fp32 gradient
FIT_METHODS = {
    "full": "full fine-tuning in bf16 mixed precision with AdamW: 2 + 2 + 4 + 8 = 16 bytes a parameter",
    "lora": "LoRA on all linear layers of a frozen bf16 base (2 bytes a weight)",
    "qlora": "QLoRA: the blocks' linear layers in NF4 (4.127 bits a weight), every other weight in fp32 "
             "(prepare_model_for_kbit_training upcasts them), LoRA on all linear layers",
}
ADAPTER_DTYPES = {  # bytes per adapter parameter: (weight, gradient, Adam's two moments)
    "fp32": (4, 4, 8),  # PEFT's default (autocast_adapter_dtype=True keeps adapters in fp32 on any base)
    "bf16": (2, 2, 8),  # QLoRA's own code, and TRL's SFTTrainer on a 4-bit model: bf16 adapters, fp32 moments
}
FIT_ASSUMPTIONS = ("activation checkpointing (activation_estimate), LOGIT_BYTES per logit, LoRA on all linear layers "
                   "of the blocks, adapters in fp32 as PEFT keeps them unless stated, GPU_RESERVED of every GPU "
                   "kept for CUDA")


def fine_tuning_memory(model, method: str, *, r: int = 16, batch: int = 1, seq: int = 2048,
                       adapter_dtype: str = "fp32", other_bytes: float | None = None) -> dict:
    """Bytes of one training step as practitioners run it on a GPU (FIT_METHODS), by part: 'weights' (everything
    the model stores, frozen or trained), 'gradients', 'optimizer' (fp32 master weights and Adam moments),
    'activations' (checkpointed), 'logits' (batch x seq x vocab x LOGIT_BYTES) and 'total'. For LoRA and QLoRA,
    `adapter_dtype` (ADAPTER_DTYPES) sets the adapters' bytes and `other_bytes` the bytes of each weight outside
    the blocks' linear layers (default 2 for LoRA's bf16 base, 4 for QLoRA after prepare_model_for_kbit_training)."""
    model = _resolve_model(model)
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {list(FIT_METHODS)}, got {method!r}")
    if adapter_dtype not in ADAPTER_DTYPES:
        raise ValueError(f"adapter_dtype must be one of {list(ADAPTER_DTYPES)}, got {adapter_dtype!r}")
    if not model.vocab:
        raise ValueError(f"{model.name} records no vocabulary size, so its logits cannot be counted; give its "
                         "ModelSize a vocab")
    if method == "full" and other_bytes is not None:
        raise ValueError("full fine-tuning trains every weight at 16 bytes: other_bytes is for LoRA and QLoRA")
    activations = activation_estimate(model, batch, seq, checkpointing=True)
    logits = batch * seq * model.vocab * LOGIT_BYTES
    if method == "full":
        n = model.n_params
        weights, gradients, optimizer = 2 * n, 2 * n, 12 * n  # bf16 weights and gradients; fp32 master + moments
    else:
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"r (the rank) must be a positive int, got {r!r}")
        trained = lora_parameters(model, r, tuple(model.linears))
        w, g, moments = ADAPTER_DTYPES[adapter_dtype]
        linear = model.block_linear_params
        other = model.n_params - linear
        other_bytes = (4 if method == "qlora" else 2) if other_bytes is None else other_bytes
        base = linear * (NF4_BITS / 8 if method == "qlora" else 2) + other * other_bytes
        weights, gradients, optimizer = base + trained * w, trained * g, trained * moments
    total = weights + gradients + optimizer + activations + logits
    return {"model": model.name, "method": method, "weights": weights, "gradients": gradients, "optimizer": optimizer,
            "activations": activations, "logits": logits, "total": total}


def fits(total_bytes: float, gpu: str) -> bool:
    """Whether `total_bytes` fit on one `gpu` (GPU_KINDS) with GPU_RESERVED kept free."""
    if gpu not in GPU_KINDS:
        raise ValueError(f"gpu must be one of {list(GPU_KINDS)}, got {gpu!r}")
    return total_bytes + GPU_RESERVED <= GPU_KINDS[gpu]


def fit_table(models=tuple(REAL_MODELS), methods=tuple(FIT_METHODS), **settings) -> list[dict]:
    """One row per model and method: `fine_tuning_memory(model, method, **settings)` and, for each GPU of GPUS,
    whether it fits."""
    rows = []
    for key in models:
        for method in methods:
            row = fine_tuning_memory(key, method, **settings)
            rows.append(row | {gpu: fits(row["total"], gpu) for gpu in GPUS})
    return rows


# ------------------------------------------------------------------------------------- sharding across GPUs
# What each stage splits across the N GPUs of a data-parallel run (ZeRO, Rajbhandari et al., 2020; PyTorch FSDP's
# sharding strategies do the same for stages 2 and 3). Stage 0 is plain data parallelism: every GPU holds it all.
SHARDING = {
    0: "replicated: every GPU holds weights, gradients and optimizer state (DDP; FSDP's NO_SHARD)",
    1: "ZeRO-1: the optimizer state (fp32 master weights and Adam's moments) is split across the GPUs",
    2: "ZeRO-2 = FSDP's SHARD_GRAD_OP: the optimizer state and the gradients are split",
    3: "ZeRO-3 = FSDP's FULL_SHARD: optimizer state, gradients and weights are split; each block's weights are "
       "gathered whole for its forward and backward pass, then freed",
}
FSDP_STRATEGIES = {"NO_SHARD": 0, "SHARD_GRAD_OP": 2, "FULL_SHARD": 3}  # FSDP's names for ZeRO's stages
OFFLOAD = {
    "none": "everything stays on the GPUs",
    "optimizer": "the optimizer state lives in CPU memory and the optimizer step runs there (ZeRO-Offload; "
                 "DeepSpeed's offload_optimizer); stage 1 or more",
    "all": "weights, gradients and optimizer state live in CPU memory; each GPU holds only the blocks it is "
           "computing (FSDP's CPUOffload(offload_params=True); DeepSpeed's offload_param with offload_optimizer); "
           "stage 3 only",
}
PREFETCH_BLOCKS = 2  # under stage 3 a GPU holds the gathered weights of the block it computes and of the next one
SHARDING_ASSUMPTIONS = ("model states as ZeRO counts them (weights, gradients, optimizer state; memory_estimate); "
                        f"under stage 3 the gathered weights of {PREFETCH_BLOCKS} blocks at a time (the one being "
                        "computed and the next, prefetched); per GPU its own micro-batch's activations, "
                        "checkpointed (activation_estimate), and its logits (LOGIT_BYTES each); GPU_RESERVED of "
                        "every GPU kept for CUDA")
# The ZeRO paper's Figure 1 example: 7.5 B parameters (only the count matters for model states; the block shape,
# used for the gathered line of stage 3, is a GPT of d = 4096 with 37 blocks, about 7.5 B)
ZERO_PAPER_MODEL = ModelSize("7.5B (the ZeRO paper's example)", 7_500_000_000, 37, _gpt_linears(4096), 4096, 32,
                             "ZeRO's Figure 1: 7.5 B parameters, mixed-precision Adam", 1024, vocab=50257)


def _check_sharding(gpus, stage, offload) -> None:
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise ValueError(f"gpus must be a positive int, got {gpus!r}")
    if stage not in SHARDING:
        raise ValueError(f"stage must be one of {list(SHARDING)} (ZeRO's stages; FSDP's strategies are "
                         f"{FSDP_STRATEGIES}), got {stage!r}")
    if offload not in OFFLOAD:
        raise ValueError(f"offload must be one of {list(OFFLOAD)}, got {offload!r}")
    if offload == "optimizer" and stage < 1:
        raise ValueError("offload='optimizer' needs stage 1 or more (ZeRO-Offload partitions the optimizer state)")
    if offload == "all" and stage != 3:
        raise ValueError("offload='all' (the weights too) needs stage 3: only a fully sharded run gathers weights "
                         "block by block")


def sharded_memory(model, method: str = "full", *, gpus: int = 1, stage: int = 0, offload: str = "none",
                   r: int = 16, targets="all linear", precision: str = "bf16-mixed", optimizer: str = "adamw",
                   base_bits: int | None = None, batch: int = 1, seq: int | None = None) -> dict:
    """Bytes on each of `gpus` GPUs (and in CPU memory per GPU) for a data-parallel fine-tune sharded at ZeRO
    `stage` (SHARDING; FSDP_STRATEGIES maps FSDP's names) with `offload` (OFFLOAD). The model states come from
    `memory_estimate(model, method, r, targets, precision, optimizer, base_bits)`: stage 1 divides the optimizer
    state by `gpus`, stage 2 the gradients too, stage 3 the weights too. Keys: 'weights', 'gradients',
    'optimizer' (on each GPU), 'model_states' (their sum: ZeRO's figure), 'gathered' (stage 3: PREFETCH_BLOCKS
    blocks' weights), 'activations' and 'logits' of `batch` sequences of `seq` tokens per GPU (batch=0: none),
    'cpu' (offloaded bytes per GPU), 'total' (on each GPU). Assumptions: SHARDING_ASSUMPTIONS."""
    _check_sharding(gpus, stage, offload)
    size = _resolve_model(model)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
        raise ValueError(f"batch must be an int >= 0 (0: leave activations and logits out), got {batch!r}")
    est = memory_estimate(size, method, r, targets, precision, optimizer, base_bits)
    n = gpus
    weights = est["weights"] / (n if stage >= 3 else 1)
    gradients = est["gradients"] / (n if stage >= 2 else 1)
    opt_state = est["optimizer"] / (n if stage >= 1 else 1)
    cpu = 0.0
    if offload in ("optimizer", "all"):
        cpu, opt_state = cpu + opt_state, 0.0
    if offload == "all":
        cpu, weights, gradients = cpu + weights + gradients, 0.0, 0.0
    gathered = 0.0
    if stage == 3:
        mode = PRECISIONS[precision]
        bits = 8 * mode.weight if method == "full" else est["base_bits"]
        block_linear = size.block_linear_params / size.n_layer * bits / 8
        block_adapters = (est["trainable"] / size.n_layer * mode.weight) if method == "lora" else 0.0
        gathered = PREFETCH_BLOCKS * (block_linear + block_adapters) * (n - 1) / n  # its own shard is counted above
        if offload == "all":
            gathered = PREFETCH_BLOCKS * (block_linear + block_adapters)
    seq = size.context if seq is None else seq
    activations = activation_estimate(size, batch, seq, checkpointing=True) if batch else 0.0
    logits = batch * seq * size.vocab * LOGIT_BYTES
    states = weights + gradients + opt_state
    return {"model": size.name, "method": method, "precision": precision, "gpus": n, "stage": stage,
            "offload": offload, "trainable": est["trainable"], "weights": weights, "gradients": gradients,
            "optimizer": opt_state, "model_states": states, "gathered": gathered, "activations": activations,
            "logits": logits, "cpu": cpu, "total": states + gathered + activations + logits}


def gpus_needed(model, method: str = "full", gpu: str = "A100 80 GB", *, stage: int = 3, offload: str = "none",
                max_gpus: int = 4096, **settings) -> int | None:
    """The fewest GPUs of kind `gpu` (GPU_KINDS) on which `sharded_memory(model, method, gpus=n, stage=stage,
    offload=offload, **settings)['total']` fits with GPU_RESERVED kept free; None if even `max_gpus` do not
    (without sharding more GPUs never help: each holds everything)."""
    if gpu not in GPU_KINDS:
        raise ValueError(f"gpu must be one of {list(GPU_KINDS)}, got {gpu!r}")
    _check_sharding(1, stage, offload)

    def fits_on(n: int) -> bool:
        return fits(sharded_memory(model, method, gpus=n, stage=stage, offload=offload, **settings)["total"], gpu)

    if fits_on(1):
        return 1
    if stage == 0 or not fits_on(max_gpus):
        return None
    lo, hi = 1, max_gpus  # lo does not fit, hi does: the memory per GPU falls as GPUs are added
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_on(mid) else (mid, hi)
    return hi


def zero_paper_figure1() -> dict:
    """The ZeRO paper's Figure 1 (7.5 B parameters, 64 GPUs, mixed-precision Adam: 2 + 2 + 12 bytes a parameter)
    beside this module's arithmetic: model states per GPU in GB at stages 0 to 3."""
    ours = {s: sharded_memory(ZERO_PAPER_MODEL, "full", gpus=64, stage=s, precision="bf16-mixed",
                              batch=0)["model_states"] / 1e9 for s in SHARDING}
    return {"paper_gb": {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}, "ours_gb": ours}


def fsdp_qlora_70b(seq: int = 512, r: int = 16, gpu: str = "RTX 3090/4090 24 GB", offload: str = "none") -> dict:
    """Answer.AI's FSDP-QLoRA claim (2024: a 70 B model fine-tuned on two 24 GB GPUs) on paper: LLaMA-2 70B, its
    blocks' linear layers in NF4, LoRA r on all of them, FULL_SHARD over 2 GPUs, batch 1 of `seq` tokens with
    checkpointing. Returns the per-GPU breakdown on 1 and 2 GPUs, and on 2 GPUs with a bf16 base (plain LoRA)."""
    qlora = dict(r=r, targets="all linear", precision="qlora", batch=1, seq=seq)
    two = sharded_memory("70b", "lora", gpus=2, stage=3, offload=offload, **qlora)
    one = sharded_memory("70b", "lora", gpus=1, stage=0, **qlora)
    lora16 = sharded_memory("70b", "lora", gpus=2, stage=3, r=r, targets="all linear", precision="bf16-mixed",
                            batch=1, seq=seq)
    return {"two_gpus": two, "one_gpu": one, "bf16_base_two_gpus": lora16, "room": GPU_KINDS[gpu] - GPU_RESERVED,
            "fits_two": fits(two["total"], gpu), "fits_one": fits(one["total"], gpu),
            "fits_bf16_base_two": fits(lora16["total"], gpu)}
