"""Graded exercises of notebook 01: Meet the base model."""

from __future__ import annotations

import torch

from .core import (
    _base_parameters,
    _first_match,
    check_choice,
    check_function,
    check_number,
    right_answer,
)

__all__ = ["check_always_austen_accuracy", "check_block_parameters", "check_frozen_mlp_share", "check_shakespeare_gap"]

AUTHORS_PER_SPLIT = 3  # author_task: the same number of validation passages (100) for each of 3 authors
UNBALANCED_SPLIT = {"austen": 200, "shakespeare": 50, "melville": 50}  # the split exercise 1 imagines


@right_answer(lambda: UNBALANCED_SPLIT["austen"] / sum(UNBALANCED_SPLIT.values()))
def check_always_austen_accuracy(answer) -> bool:
    """01: accuracy of a model that always answers "austen" on a split of 200 Austen, 50 Shakespeare, 50 Melville."""
    n = sum(UNBALANCED_SPLIT.values())
    expected = check_always_austen_accuracy.right_answer()
    return check_number(
        answer, expected, name="always_austen", rel_tol=0.02,
        hint="accuracy = passages answered right / all passages; which passages does 'austen' get right?",
        explanation=f"{expected:.3f}: right on the {UNBALANCED_SPLIT['austen']} Austen passages, wrong on the "
                    f"other {n - UNBALANCED_SPLIT['austen']}. On an unbalanced split, always naming the largest "
                    "class beats 1/3, so compare an accuracy with the largest class's share, not with 1 / the "
                    "number of labels. The course's splits are balanced (100 passages per author), so there the "
                    "same model scores 1/3, and the baseline cell counts the predictions to show what a model says.",
        mistakes=[(100 * expected, "that looks like a percentage; give a fraction between 0 and 1."),
                  (1 / AUTHORS_PER_SPLIT, "that is the accuracy on a balanced split; here 200 of the 300 passages "
                                          "are Austen's."),
                  (1.0, "the model is right only on the passages Austen wrote, not on all of them."),
                  (0.0, "the passages Austen wrote are answered correctly."),
                  (float(UNBALANCED_SPLIT["austen"]), "that is how many passages it gets right; divide by the "
                                                       "number of passages.")])


def _block_reference(d: int) -> int:
    from ..model import Block, GPTConfig

    with torch.random.fork_rng(devices=[]):  # a check must not move the notebook's random stream
        return sum(p.numel() for p in Block(GPTConfig(n_embd=d, n_head=1)).parameters())


def _block_mistakes(case, got):
    (d,) = case
    right = _block_reference(d)
    return _first_match(got, [
        (right - 4 * d, "you left out the two layer norms: each has a weight and a bias of d numbers."),
        (right - 9 * d, "you left out the biases: every Linear has one, of out_features numbers."),
        (right - 13 * d, "you left out the biases and the two layer norms."),
        (right - 6 * d * d, "the MLP goes d → 4d → d: each of its two matrices has 4·d² numbers."),
        (4 * right, "that is four blocks; the function counts one."),
    ])


def block_parameters(d):
    """Parameters in one Block of width d: two layer norms, q/k/v/o_proj, up_proj and down_proj."""
    layer_norms = 2 * 2 * d
    attention = 4 * (d * d + d)
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    return layer_norms + attention + mlp


@right_answer(lambda: block_parameters)
def check_block_parameters(fn) -> bool:
    """01: block_parameters(d) = the number of parameters in one transformer block of width d."""
    d = 128
    right = _block_reference(d)
    return check_function(
        fn, name="block_parameters", arg_names=["d"], cases=[(8,), (16,), (128,)], reference=_block_reference,
        diagnose=_block_mistakes,
        hint="go through the block layer by layer, as the exercise lists them: a Linear(a, b) keeps a·b weights "
             "and b biases. Which layers are d → d, and which go to or come from the MLP's 4d?",
        explanation=f"12·d² + 13·d. At d = {d}: {right:,} per block, and the 4 blocks hold {4 * right:,} of the "
                    f"base model's {_base_parameters():,} parameters; the rest are the embeddings, the final "
                    "layer norm and the output head.")


def _mlp_parameters() -> tuple[int, int]:
    """Parameters (weights and biases) of all the base model's up_proj, and of all its down_proj."""
    from ..model import base_model_card

    cfg = base_model_card()["config"]
    d, hidden = cfg["n_embd"], 4 * cfg["n_embd"]
    return cfg["n_layer"] * (d * hidden + hidden), cfg["n_layer"] * (hidden * d + d)


@right_answer(lambda: (_base_parameters() - sum(_mlp_parameters())) / _base_parameters())
def check_frozen_mlp_share(answer) -> bool:
    """01: the fraction of the base model's parameters that still trains when every MLP is frozen."""
    total, (up, down) = _base_parameters(), _mlp_parameters()
    mlp = up + down
    expected = check_frozen_mlp_share.right_answer()
    return check_number(
        answer, expected, name="still_trains", rel_tol=0.02,
        hint="which rows of the budget table belong to the MLP? The share that still trains is what the other rows "
             "hold, as a fraction of the whole model.",
        explanation=f"{expected:.3f}: up_proj and down_proj hold {mlp:,} of the {total:,} parameters "
                    f"({mlp / total:.1%}), so {expected:.1%} still trains. Full fine-tuning changes every "
                    "parameter, and most of what it changes sits in the MLP.",
        mistakes=[(mlp / total, "that is the share you froze (the MLP); the question asks what still trains."),
                  (100 * expected, "that looks like a percentage; give a fraction between 0 and 1."),
                  ((total - up) / total, "up_proj and down_proj are both part of the MLP: freeze both."),
                  ((total - mlp) / mlp, "divide by the total number of parameters, not by the MLP's."),
                  (float(total - mlp), "that is a number of parameters; divide it by the total.")])


@right_answer(lambda: "c")
def check_shakespeare_gap(answer) -> bool:
    """01: why is the base model's loss on Shakespeare so much higher than on Austen?"""
    return check_choice(
        answer, check_shakespeare_gap.right_answer(), name="shakespeare_gap",
        wrong={"a": "every shipped text is covered by the 97-character vocabulary; CharTokenizer raises an error "
                    "on a character it lacks, it never scores one as wrong.",
               "b": "the loss is a mean per character, so the length of the text does not change it.",
               "d": "fine-tuning this same model on Shakespeare brings its loss down a long way (notebook 02): "
                    "it can represent the new text, it has just never seen it."},
        explanation="Pretraining on Austen never showed the model speaker names in capitals with a colon, verse "
                    "line breaks, or words like 'thou' and 'hath': after 'ROMEO:' it went on in Austen's prose. "
                    "That gap is what fine-tuning must close.")
