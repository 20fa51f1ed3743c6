"""Graded exercises of notebook 03: Adapters: small bottleneck layers inside a frozen model."""

from __future__ import annotations

from .core import (
    _base_parameters,
    _first_match,
    check_choice,
    check_function,
    check_number,
)


def check_adapter_parameter_count(fn) -> bool:
    """Adapters: adapter_parameters(d, m) = parameters of one bottleneck adapter d → m → d, with biases."""
    def reference(d, m):
        return 2 * m * d + d + m

    def mistakes(case, got):
        d, m = case
        return _first_match(got, [
            (2 * m * d, "you left out the biases: m for the down-projection, d for the up-projection."),
            (m * d + m, "an adapter has two projections: down (d → m) and up (m → d)."),
            (m * d + d, "an adapter has two projections: down (d → m) and up (m → d)."),
            (2 * m * d + 2 * d, "the down-projection's bias has m numbers (its output size), not d.")])

    return check_function(
        fn, name="adapter_parameters", arg_names=["d", "m"], cases=[(128, 16), (64, 8), (10, 3)],
        reference=reference, diagnose=mistakes,
        hint="down-projection: an (m, d) weight and m biases; up-projection: a (d, m) weight and d biases.",
        explanation="2·m·d + d + m: at d = 128 and m = 16 that is 4,240 per adapter, against 16,512 for one "
                    "attention projection (66,048 for the four).")


PFEIFFER_CASE = {"d": 128, "n_layer": 4, "m": 32}  # our model, one adapter per block, layer norms frozen


def _pfeiffer_reference(d: int, n_layer: int, m: int) -> int:
    return n_layer * (2 * m * d + d + m)  # one adapter per block


def check_pfeiffer_parameter_count(answer) -> bool:
    """03: trainable parameters of Pfeiffer adapters with m = 32 and frozen layer norms on our model."""
    d, n_layer, m = PFEIFFER_CASE["d"], PFEIFFER_CASE["n_layer"], PFEIFFER_CASE["m"]
    one = 2 * m * d + d + m
    expected = _pfeiffer_reference(d, n_layer, m)
    layer_norms = 2 * d * (2 * n_layer + 1)
    return check_number(
        answer, expected, name="pfeiffer_m32", rel_tol=1e-6,
        hint="one adapter per block (after the MLP), each 2·m·d + d + m; the layer norms are frozen here.",
        explanation=f"{n_layer} × (2·{m}·{d} + {d} + {m}) = {n_layer} × {one:,} = {expected:,}, between the "
                    "table's 16,960 (m = 16) and 66,304 (m = 64): the count grows almost linearly in m. Check it: "
                    "count_parameters(add_adapters(copy.deepcopy(base), 32, 'pfeiffer', train_layer_norms=False)).",
        mistakes=[(2 * expected, "that is Houlsby placement, two adapters per block; Pfeiffer keeps one, after "
                                 "the MLP."),
                  (expected + layer_norms, f"that includes the layer norms' {layer_norms:,} parameters; here they "
                                           "are frozen."),
                  (one, f"that is one adapter; the model has {n_layer} blocks with one adapter each."),
                  (n_layer * 2 * m * d, "you left out the biases: m for the down-projection, d for the up one."),
                  (n_layer * (2 * m * d + 2 * d), "the down-projection's bias has m numbers (its output size), "
                                                  "not d."),
                  (n_layer * (m * d + d + m), "an adapter has two projections, down (d → m) and up (m → d), "
                                              "each with m·d weights."),
                  (_base_parameters() + expected, "that is every parameter of the adapted model; only the "
                                                  "adapters are trained.")])


def check_adapter_without_skip(answer) -> bool:
    """03: what the Houlsby-adapted model computes at step 0 if the adapter had no skip connection."""
    return check_choice(
        answer, "b", name="no_skip",
        wrong={"a": "without the skip connection, an adapter that outputs zero replaces the sublayer's output by "
                    "zero: the sublayer is deleted, not kept.",
               "c": "the residual stream still carries the token and position embeddings past every block; the "
                    "blocks add zero to it, they do not replace it.",
               "d": "Houlsby placement wraps both sublayers, attention and MLP. With Pfeiffer placement (after "
                    "the MLP only) this would be the answer."},
        explanation="Every wrapped sublayer now outputs zero, so the blocks add nothing to the residual stream and "
                    "the model is embeddings → final layer norm → output head, far from the pretrained model. The "
                    "skip connection is what makes a zero up-projection the identity: with it, step 2 printed "
                    "`output equals input exactly: True` and the adapted model gave the base's logits bit for bit.")


def check_why_adapters_cannot_merge(answer) -> bool:
    """03: what stops an adapter from being merged into the frozen weights, as LoRA's update is."""
    return check_choice(
        answer, "c", name="merge_blocker",
        wrong={"a": "without the GELU the biases would fold in too: (I + W_up W_down) y + W_up b_down + b_up is "
                    "affine, and its constant joins the bias of the layer the adapter follows.",
               "b": "x + W_up W_down x = (I + W_up W_down) x is one d × d matrix: the skip connection alone would "
                    "merge without trouble.",
               "d": "the product W_up W_down is d × d whatever m is, just as LoRA's B A has the weight's shape "
                    "although neither B nor A is square."},
        explanation="With σ(z) = z the adapter would be affine, (I + W_up W_down) y + W_up b_down + b_up, and "
                    "could be folded into the projection it follows. The GELU makes it a non-linear function of "
                    "its input, which no single matrix replaces: the non-linearity adds capacity, and it keeps "
                    "the extra layers in every forward pass, the inference latency measured above.")
