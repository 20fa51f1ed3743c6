"""lora_teach: the helper package of the lora-teach course. One small module per concept, in course order."""

from .data import LanguageModelingTask, author_task, load_corpus, sentence_task, split_corpus
from .measure import (
    activation_memory,
    checkpoint_size,
    count_parameters,
    print_trainable_parameters,
    step_time,
    training_memory,
)
from .model import GPT, GPTConfig, base_model_card, get_device, load_base_model
from .tokenizer import CharTokenizer
from .training import SEED, History, evaluate, seed_everything, train

__version__ = "0.1.0"
__all__ = [
    "GPT", "GPTConfig", "CharTokenizer", "History", "LanguageModelingTask", "SEED",
    "activation_memory", "author_task", "base_model_card", "checkpoint_size", "count_parameters",
    "evaluate", "get_device", "load_base_model", "load_corpus", "print_trainable_parameters",
    "seed_everything", "sentence_task", "split_corpus", "step_time", "train", "training_memory",
]
