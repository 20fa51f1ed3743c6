"""Graded exercises of notebook 06: P-tuning."""

from __future__ import annotations

from .core import (
    check_number,
    right_answer,
)

__all__ = ["check_spliced_logit_position", "check_p_tuning_kept_numbers", "check_forward_lstm_moved"]


@right_answer(lambda: 12 + 64 - 2)  # the passage's second-to-last character sits at 12 + 62
def check_spliced_logit_position(answer) -> bool:
    """06: with 12 virtual tokens in front of the 64-character passage and 8 before " => ", the position of the
    spliced sequence whose logits predict the passage's last character."""
    before, passage = 12, 64
    expected = check_spliced_logit_position.right_answer()
    return check_number(
        answer, expected, name="last_char_position", rel_tol=0,
        hint="find where the passage's last character sits in the spliced sequence (count what the template puts "
             "in front of the passage); the logits that predict a token are read one position before it.",
        explanation=f"The passage fills positions {before} to {before + passage - 1}; its last character "
                    f"(character {passage - 1}) sits at {before + passage - 1}, so the logits that predict it are "
                    f"read one position earlier, at {expected}, on the character before it. Only where a group of "
                    "virtual tokens sits just before a real token is the reading position a virtual one.",
        mistakes=[(before + passage - 1, "that is where the last character itself sits; the logits that predict "
                                         "a token are read one position before it."),
                  (15 + passage - 2, "that is the answer for section 4's template, with 15 virtual tokens in "
                                     "front; this template has 12."),
                  (passage - 2, "that is the position in x, before splicing: add the 12 virtual tokens in front."),
                  (passage - 1, "that is the last character's index in x, before splicing; add the 12 virtual "
                                "tokens in front, then read one position earlier."),
                  (before + passage + 8 - 1, "position 83 is the last virtual token, which predicts the first "
                                             "character of ` => `, not the passage's last one.")])


@right_answer(lambda: 30 * 768)  # one vector of d numbers per virtual token
def check_p_tuning_kept_numbers(answer) -> bool:
    """06: numbers a task keeps after drop_encoder() with 30 virtual tokens on GPT-2 small (d = 768)."""
    n_virtual, d, n_layer = 30, 768, 12
    expected = check_p_tuning_kept_numbers.right_answer()
    return check_number(
        answer, expected, name="kept_numbers",
        hint="after training, is the encoder still needed? Count only what it leaves behind for inference.",
        explanation=f"{n_virtual} × {d} = {expected:,}, exactly what a {n_virtual}-token soft prompt would keep: "
                    "after drop_encoder() P-tuning costs nothing more at inference than prompt tuning, whatever "
                    "encoder trained it and wherever the template puts the tokens.",
        mistakes=[(20 * 128, "that is our model's count (20 tokens of 128 numbers); this is GPT-2 small with 30 "
                             "virtual tokens."),
                  (n_virtual, "that counts the virtual tokens; each one is a vector of d numbers."),
                  (d, "that is one virtual token; there are 30 of them."),
                  (2 * n_layer * n_virtual * d, "that is prefix tuning's count (a key and a value at every layer); "
                                                "P-tuning's vectors enter at the input only.")])


@right_answer(lambda: 20 - 7)  # outputs 7 to 19 have read input 7
def check_forward_lstm_moved(answer) -> bool:
    """06: with a forward-only LSTM in the prompt encoder, how many of 20 virtual tokens move when input 7 moves."""
    n_virtual, nudged = 20, 7
    expected = check_forward_lstm_moved.right_answer()
    return check_number(
        answer, expected, name="moved_forward_only", rel_tol=0,
        hint="a forward LSTM's output at position j has read the inputs 0 to j and nothing after j; the MLP then "
             "acts on each position on its own.",
        explanation=f"Outputs {nudged} to {n_virtual - 1} have read input {nudged}: {expected} of {n_virtual}. The "
                    "MLP acts on each position separately, so it spreads nothing further. The backward direction "
                    "is what lets the tokens before 7 depend on it too: with both directions every output depends "
                    "on every input (20 of 20 in section 3), the association between virtual tokens that Liu et "
                    "al. wanted.",
        mistakes=[(n_virtual, "that is the bidirectional LSTM of section 3; a forward-only one cannot carry the "
                              "nudge back to the tokens before 7."),
                  (expected - 1, "count token 7 itself: outputs 7 to 19 are 13 tokens."),
                  (nudged + 1, "that counts tokens 0 to 7; a forward LSTM carries information forward, to the "
                               "tokens after 7."),
                  (nudged, "that counts tokens 0 to 6, before the nudge; a forward LSTM carries it to the tokens "
                           "after 7."),
                  (1, "the LSTM's state carries the nudge on to every later position, not only to output 7.")])
