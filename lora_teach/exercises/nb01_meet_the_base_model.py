"""Graded exercises of notebook 01: Meet the base model."""

from __future__ import annotations

import torch

from .core import (
    _base_parameters,
    _first_match,
    check_choice,
    check_function,
    check_number,
)

AUTHORS_PER_SPLIT = 3  # author_task: the same number of validation passages (100) for each of 3 authors


def check_always_austen_accuracy(answer) -> bool:
    """01: validation accuracy of a model that always answers "austen" on the author task."""
    expected = 1 / AUTHORS_PER_SPLIT
    return check_number(
        answer, expected, name="always_austen", rel_tol=0.02,
        hint="how many of the validation passages are Austen's? The splits hold the same number per author.",
        explanation=f"{expected:.3f}: the validation split has 100 passages by each of the 3 authors, so "
                    "always answering 'austen' is right on 100 of 300. Chance accuracy can hide a model that "
                    "says only one thing; that is why the baseline cell also counts the predictions.",
        mistakes=[(100 * expected, "that looks like a percentage; give a fraction between 0 and 1."),
                  (1.0, "the model is right only on the passages Austen wrote, not on all of them."),
                  (0.0, "the passages Austen wrote are answered correctly."),
                  (100.0, "that is how many passages it gets right; divide by the number of passages.")])


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


def check_block_parameters(fn) -> bool:
    """01: block_parameters(d) = the number of parameters in one transformer block of width d."""
    d = 128
    right = _block_reference(d)
    return check_function(
        fn, name="block_parameters", arg_names=["d"], cases=[(8,), (16,), (128,)], reference=_block_reference,
        diagnose=_block_mistakes,
        hint="add up: ln_1 and ln_2 (weight and bias, d each), q/k/v/o_proj (d×d weight + d bias each), "
             "up_proj (d×4d + 4d) and down_proj (4d×d + d).",
        explanation=f"12·d² + 13·d. At d = {d}: {right:,} per block, and the 4 blocks hold {4 * right:,} of the "
                    f"base model's {_base_parameters():,} parameters; the rest are the embeddings, the final "
                    "layer norm and the output head.")


def check_largest_share(answer) -> bool:
    """01: in which kind of layer does full fine-tuning change the most parameters?"""
    return check_choice(
        answer, "c", name="largest_share",
        wrong={"a": "the token and position embeddings are small tables here (97 characters, 128 positions): "
                    "a few percent of the parameters (see the budget table).",
               "b": "the four attention projections come second: four d×d matrices per block, against the "
                    "MLP's two d×4d matrices, twice as many numbers.",
               "d": "a layer norm has only 2·d parameters: 0.3% of the model together."},
        explanation="up_proj and down_proj hold about 63% of the parameters. Full fine-tuning changes every "
                    "parameter, so most of what it changes sits in the MLP.")


def check_shakespeare_gap(answer) -> bool:
    """01: why is the base model's loss on Shakespeare so much higher than on Austen?"""
    return check_choice(
        answer, "c", name="shakespeare_gap",
        wrong={"a": "every shipped text is covered by the 97-character vocabulary; CharTokenizer raises an error "
                    "on a character it lacks, it never scores one as wrong.",
               "b": "the loss is a mean per character, so the length of the text does not change it.",
               "d": "fine-tuning this same model on Shakespeare brings its loss down a long way (notebook 02): "
                    "it can represent the new text, it has just never seen it."},
        explanation="Pretraining on Austen never showed the model speaker names in capitals with a colon, verse "
                    "line breaks, or words like 'thou' and 'hath'. That gap is what fine-tuning must close.")
