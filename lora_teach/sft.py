"""Supervised fine-tuning the way practitioners run it (transformers, PEFT, TRL), on the course's own data.

Data:     `instruction_splits` turns the author and sentence tasks into chat conversations in TRL's `messages`
          format: "Who wrote this passage?", "What kind of sentence is this?" (a label answer each) and
          "Continue this passage:" (open-ended); train, validation and test share no passage.
          `preference_pairs` makes DPO's (prompt, chosen, rejected) triples from the same conversations.
Chat:     `add_chat_format` gives the course's character tokenizer special tokens and a chat template whose
          assistant turns sit between {% generation %} markers (what TRL's assistant-only loss reads);
          `training_chat_template` finds such a template for a real model's tokenizer; `loss_characters` shows
          which characters of a formatted conversation carry loss, `chat_batch` builds the batch that loss uses.
Models:   `model_source` (the notebook's MODEL -> a folder or a Hub name, checked), `lora_target_modules`,
          `stores_transposed` (GPT-2's Conv1D: fan_in_fan_out), `embedding_names` (for modules_to_save);
          `keep_cpu_4bit_layout` and `full_copies_to` work around two traps of 4-bit training met here.
Scoring:  `generate_answers` (greedy, batched, stopped at `end_of_turn_ids`), `extract_label`, `label_accuracy`,
          `mean_and_std`.
Memory:   `tensor_bytes` (what a set of models holds), `saved_for_backward_bytes` (what autograd keeps).

A setting the notebook cannot run with raises `SetupError`, a ValueError that Jupyter shows as its message
alone: the message says what to change.
"""

from __future__ import annotations

import os
import random
import statistics
from pathlib import Path

import torch

from .data import AUTHORS, SENTENCE_LABELS, author_task, sentence_task
from .tokenizer import VOCAB

SPLITS = ("train", "val", "test")
QUESTIONS = {"author": "Who wrote this passage?", "sentence": "What kind of sentence is this?",
             "continue": "Continue this passage:"}
LABELS = {"author": tuple(AUTHORS.values()), "sentence": tuple(SENTENCE_LABELS.values())}  # the scored kinds
CONTINUE_SPLIT = 40  # an open-ended prompt keeps the passage up to the last space within its first 40 characters
CONTINUE_COUNTS = {"train": 300, "val": 60, "test": 60}  # open-ended conversations per split


class SetupError(ValueError):
    """A notebook setting that cannot work, with what to do instead; Jupyter shows the message, not a traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook: these lines replace the traceback
        return [f"{type(self).__name__}: {self}"]


# ---------------------------------------------------------------------------------------------------- data
def conversation(kind: str, passage: str, answer: str) -> dict:
    """One example: `messages` (a user turn with the kind's question and the passage, an assistant turn with
    the answer), and beside it its kind, answer and passage."""
    if kind not in QUESTIONS:
        raise ValueError(f"kind must be one of {list(QUESTIONS)}, got {kind!r}")
    return {"messages": [{"role": "user", "content": f"{QUESTIONS[kind]} {passage}"},
                         {"role": "assistant", "content": answer}],
            "kind": kind, "answer": answer, "passage": passage}


def split_for_continuation(passage: str) -> tuple[str, str]:
    """(beginning, rest) of a passage, cut at the last space within its first CONTINUE_SPLIT characters."""
    cut = passage.rfind(" ", 0, CONTINUE_SPLIT + 1)
    if cut <= 0:
        raise ValueError(f"no space within the first {CONTINUE_SPLIT} characters of {passage[:60]!r}")
    return passage[:cut], passage[cut + 1:]


def instruction_splits(seed: int = 0) -> dict[str, list[dict]]:
    """{'train', 'val', 'test'}: conversations of the three kinds, shuffled. The author and sentence kinds are
    every example of `author_task()` and `sentence_task()` (their splits share no passage); the open-ended kind
    reuses the first CONTINUE_COUNTS[split] author passages of the same split, so no passage crosses splits."""
    tasks = {"author": author_task(), "sentence": sentence_task()}
    rng = random.Random(seed)
    out = {}
    for split in SPLITS:
        rows = [conversation(kind, ex.text.strip(), ex.label)
                for kind, task in tasks.items() for ex in getattr(task, split)]
        for ex in getattr(tasks["author"], split)[:CONTINUE_COUNTS[split]]:
            beginning, rest = split_for_continuation(ex.text)
            rows.append(conversation("continue", beginning, rest) | {"passage": ex.text})
        rng.shuffle(rows)
        out[split] = rows
    return out


def preference_pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    """DPO triples in TRL's conversational format: the user turn as `prompt`, the right answer as `chosen`, and as
    `rejected` another label of the same kind (scored kinds) or the rest of another passage (open-ended)."""
    rng = random.Random(seed)
    rests = [r["answer"] for r in rows if r["kind"] == "continue"]
    pairs = []
    for row in rows:
        if row["kind"] in LABELS:
            wrong = rng.choice([label for label in LABELS[row["kind"]] if label != row["answer"]])
        else:
            others = [rest for rest in rests if rest != row["answer"]]
            if not others:
                raise ValueError("an open-ended pair needs the rest of another passage: pass at least two")
            wrong = rng.choice(others)
        pairs.append({"prompt": row["messages"][:1], "chosen": [{"role": "assistant", "content": row["answer"]}],
                      "rejected": [{"role": "assistant", "content": wrong}]})
    return pairs


# ---------------------------------------------------------------------------------------------- chat format
COURSE_SPECIAL_TOKENS = {"user": "<|user|>", "assistant": "<|assistant|>", "end": "<|end|>", "pad": "<|pad|>"}
# Each turn: its role token, its text, the end-of-turn token. The assistant's text and its end token sit inside
# {% generation %}: transformers marks those tokens in `assistant_masks`, and TRL puts the loss on them alone.
COURSE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>"
    "{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ raise_exception('the course chat template has the roles user and assistant, not '"
    " + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# ChatML (<|im_start|>role ... <|im_end|>), the format of SmolLM2's and Qwen's instruct models, with the markers.
# The newline after an assistant turn is written as {{ '\\n' }}: a bare newline right after a tag is trimmed.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _is_course_tokenizer(tokenizer) -> bool:
    """The course's characters at their ids, and no other token than the course's chat tokens."""
    vocab = tokenizer.get_vocab()
    extra = set(vocab) - set(VOCAB)
    return all(vocab.get(ch) == i for i, ch in enumerate(VOCAB)) and extra <= set(COURSE_SPECIAL_TOKENS.values())


def add_chat_format(tokenizer) -> list[int]:
    """Give the course's character tokenizer (`lora_teach.hf.hf_tokenizer`) the special tokens of
    COURSE_SPECIAL_TOKENS (end of turn = eos, pad) and COURSE_CHAT_TEMPLATE, in place (a second call changes
    nothing). Returns the ids of those four tokens: ids beyond the model's vocabulary, so the model needs rows for
    them (`resize_token_embeddings`)."""
    if not _is_course_tokenizer(tokenizer):
        raise SetupError("add_chat_format is for the course's character tokenizer; a real instruct model's "
                         "tokenizer has its own chat tokens and template: use training_chat_template(tokenizer)")
    t = COURSE_SPECIAL_TOKENS
    tokenizer.add_special_tokens({"eos_token": t["end"], "pad_token": t["pad"],
                                  "additional_special_tokens": [t["user"], t["assistant"]]})
    tokenizer.chat_template = COURSE_CHAT_TEMPLATE
    return tokenizer.convert_tokens_to_ids(list(t.values()))


def training_chat_template(tokenizer) -> str:
    """A chat template for `tokenizer` with {% generation %} markers around each assistant turn and its
    end-of-turn token: its own if it has them, else TRL's patched copy of a template TRL knows, else a ChatML
    template when the tokenizer speaks ChatML. SetupError when it has no template or none of these fits."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if isinstance(template, dict):  # a template shipped in named variants
        template = template.get("default")
    if not template:
        raise SetupError("this tokenizer has no chat template, so it belongs to a base (pretrained only) model, "
                         "not an instruct model: choose the model's -Instruct version (for example "
                         "'HuggingFaceTB/SmolLM2-135M-Instruct' or 'Qwen/Qwen2.5-0.5B-Instruct'), or set "
                         "tokenizer.chat_template yourself (lora_teach.sft.CHATML_TRAINING_TEMPLATE is one)")
    if has_generation_markers(template):
        return template
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:  # TRL does not know this template
        patched = None
    if patched:
        return patched
    if "<|im_start|>" in template and "<|im_end|>" in tokenizer.get_vocab():
        return CHATML_TRAINING_TEMPLATE
    raise SetupError("this tokenizer's chat template has no {% generation %} markers, and neither TRL nor "
                     "lora_teach knows how to add them: copy tokenizer.chat_template, wrap each assistant message "
                     "and its end-of-turn token in {% generation %} ... {% endgeneration %}, and assign it back")


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids generation stops at: the tokenizer's eos and the end-of-turn tokens of the common chat formats."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [vocab[t] for t in ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>") if t in vocab]
    return sorted(set(ids))


def loss_characters(tokenizer, messages: list[dict], hidden: str = "·") -> tuple[str, str]:
    """(text, loss): the conversation as the template renders it, and the same text with every token that
    carries no loss replaced by `hidden` characters (newlines shown as ↵ in both)."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    text, loss = [], []
    for token, in_loss in zip(enc["input_ids"], enc["assistant_masks"], strict=True):
        piece = tokenizer.decode([token]).replace("\n", "↵")
        text.append(piece)
        loss.append(piece if in_loss else hidden * len(piece))
    return "".join(text), "".join(loss)


def chat_batch(tokenizer, conversations: list[list[dict]]) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels (B, T) of whole conversations, padded on the right; labels are -100
    (no loss) outside the assistant turns: what TRL's assistant-only loss trains on."""
    enc = tokenizer.apply_chat_template(conversations, return_dict=True, return_assistant_tokens_mask=True)
    rows = list(zip(enc["input_ids"], enc["assistant_masks"], strict=True))
    B, T = len(rows), max(len(ids) for ids, _ in rows)
    batch = {"input_ids": torch.full((B, T), tokenizer.pad_token_id),
             "attention_mask": torch.zeros(B, T, dtype=torch.long), "labels": torch.full((B, T), -100)}
    for i, (ids, mask) in enumerate(rows):
        ids, mask = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
        batch["input_ids"][i, :len(ids)] = ids
        batch["attention_mask"][i, :len(ids)] = 1
        batch["labels"][i, :len(ids)] = ids.masked_fill(~mask, -100)
    return batch


# -------------------------------------------------------------------------------------------------- models
def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def model_source(model: str, folder: str | Path) -> str:
    """What `from_pretrained` should load for the notebook's MODEL: 'course' exports the shipped base model (and
    its tokenizer) into `folder` as a GPT-2 model (`GPT2LMHeadModel`: its layers keep the batch dimension, which
    PEFT's mixed-adapter batches need; OPT flattens it in the MLP); a local folder is checked for its
    config.json; a Hub name is checked against the local cache when the Hub is switched off. SetupError, saying
    what to do, for anything else."""
    if not isinstance(model, str) or not model.strip():
        raise SetupError(f"MODEL must be 'course', a Hugging Face Hub name such as "
                         f"'HuggingFaceTB/SmolLM2-135M-Instruct', or a local folder; got {model!r}")
    if model == "course":
        from .hf import save_pretrained
        from .model import load_base_model

        return str(save_pretrained(load_base_model("cpu"), Path(folder) / "course-gpt", "gpt2"))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SetupError(f"the folder {model!r} holds no config.json, so it is not a model saved with "
                             "save_pretrained: point MODEL at the folder that has config.json and the weights")
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise SetupError(f"no folder {model!r}: MODEL is 'course', a Hub name such as "
                         "'HuggingFaceTB/SmolLM2-135M-Instruct', or an existing folder")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise SetupError(f"MODEL = {model!r} is a Hugging Face Hub name, the Hub is switched off here "
                             "(HF_HUB_OFFLINE=1) and the model is not in the local cache. Run where the Hub is "
                             f"reachable (on Colab it is), download it once with `hf download {model}`, or set "
                             "MODEL to 'course' or to a local folder saved with save_pretrained")
    return model


_LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LINEAR_LAYERS = {  # model_type -> the linear layers of one block, as the architecture names them
    "gpt2": ("c_attn", "c_proj", "c_fc"),  # c_proj is both the attention's output and the MLP's second layer
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "llama": _LLAMA_STYLE, "mistral": _LLAMA_STYLE, "qwen2": _LLAMA_STYLE, "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE, "gemma2": _LLAMA_STYLE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
}


def _is_linear(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def stores_transposed(model) -> bool:
    """True when the model's linear layers are GPT-2's Conv1D, which store the weight as (in, out): PEFT's
    LoraConfig then needs fan_in_fan_out=True. (Loaded in 4 bits, they become nn.Linear-style layers.)"""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def embedding_names(model) -> list[str]:
    """The module names of the input embedding and the output head (e.g. ['wte', 'lm_head']): what
    `modules_to_save` lists when new tokens need their rows trained."""
    names = {id(m): name.rsplit(".", 1)[-1] for name, m in model.named_modules()}
    return [names[id(model.get_input_embeddings())], names[id(model.get_output_embeddings())]]


def lora_target_modules(model) -> tuple[str, ...]:
    """The linear layers of each block of a transformers model of a known architecture (LINEAR_LAYERS): what
    LoRA on all linear layers should wrap. SetupError for another architecture, or a model that lacks them."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in LINEAR_LAYERS:
        raise SetupError(f"lora_teach knows the linear layers of the architectures {sorted(LINEAR_LAYERS)}, not "
                         f"{kind!r}: list this model's layers with model.named_modules() (notebook 11) and put "
                         "their names in LoraConfig(target_modules=[...]) instead of 'all-linear'")
    found = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_linear(m)}
    missing = [name for name in LINEAR_LAYERS[kind] if name not in found]
    if missing:
        raise SetupError(f"this {kind} model has no linear layers named {missing}; its linear layers are "
                         f"{sorted(found)}")
    return LINEAR_LAYERS[kind]


def keep_cpu_4bit_layout(model) -> None:
    """Stop bitsandbytes (0.50) from repacking the 4-bit weights of `model` for its AVX-512 CPU kernel, in place.
    It repacks a layer the first time the layer runs in evaluation mode; after that, training the layer fails
    (an in-place bias add on the repacked path) and PEFT's merge misreads the repacked bytes."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def full_copies_to(model, dtype: torch.dtype) -> None:
    """Cast the trainable full copies of a PEFT model (`modules_to_save`, such as a head) to `dtype`, in place.
    TRL keeps every trainable weight of a 4-bit model in bf16, as the QLoRA paper trains adapters; LoRA layers
    cast their input to match, but a copied head in bf16 cannot read activations in another dtype."""
    for name, p in model.named_parameters():
        if p.requires_grad and ".modules_to_save." in name:
            p.data = p.data.to(dtype)


# ------------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def generate_answers(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 16,
                     batch_size: int = 64, adapter_names: list[str] | None = None) -> list[str]:
    """The model's greedy answer to each conversation's first turn, batch by batch (prompts padded on the left),
    stopped at the end of turn, special tokens removed. `adapter_names` (PEFT) picks an adapter per row."""
    if adapter_names is not None and len(adapter_names) != len(conversations):
        raise ValueError(f"adapter_names needs one name per conversation: {len(adapter_names)} names for "
                         f"{len(conversations)} conversations")
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # every prompt ends where the answer starts
    stop = end_of_turn_ids(tokenizer)
    answers = []
    try:
        for i in range(0, len(conversations), batch_size):
            prompts = [conv[:1] for conv in conversations[i:i + batch_size]]
            batch = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, padding=True,
                                                  return_tensors="pt", return_dict=True).to(model.device)
            extra = {} if adapter_names is None else {"adapter_names": adapter_names[i:i + batch_size]}
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id, **extra)
            new = out[:, batch["input_ids"].shape[1]:]  # (B, new tokens)
            answers += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def extract_label(text: str, labels) -> str | None:
    """The label word that occurs first in `text` (case ignored), or None when none occurs."""
    lowered = text.lower()
    found = [(lowered.find(label), label) for label in labels if label in lowered]
    return min(found)[1] if found else None


def label_accuracy(answers: list[str], rows: list[dict]) -> float:
    """Share of rows (all of a scored kind) whose generated answer names their label first."""
    if not rows or len(answers) != len(rows):
        raise ValueError(f"need one answer per row, got {len(answers)} answers for {len(rows)} rows")
    kinds = {row["kind"] for row in rows}
    if not kinds <= set(LABELS):
        raise ValueError(f"only the kinds {list(LABELS)} have labels to score, got {sorted(kinds)}")
    hits = [extract_label(a, LABELS[r["kind"]]) == r["answer"] for a, r in zip(answers, rows, strict=True)]
    return sum(hits) / len(hits)


def mean_and_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of a few runs; the deviation of one run is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_and_std needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# -------------------------------------------------------------------------------------------------- memory
def tensor_bytes(*modules) -> int:
    """Bytes of the distinct parameters and buffers the given modules hold (None skipped; shared storage once)."""
    seen = {}
    for module in modules:
        if module is None:
            continue
        for t in [*module.parameters(), *module.buffers()]:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def saved_for_backward_bytes(model, batch: dict) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward of a transformers model on
    `batch` (input_ids, attention_mask, labels); parameters are not counted."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    model.train(was_training)
    del loss
    return sum(seen.values())
