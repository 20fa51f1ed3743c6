"""Several adapters on one base, switched by name, and the mixed-adapter batch (lora_teach.serving, issue 16).

Invariants on small random GPTs in float64; bad input refused before anything changes. Parity of the mixed
batch with PEFT's `adapter_names` is in test_lora_peft.py.
"""

import copy
import threading

import pytest
import torch
from small_models import (
    LORA_TARGETS,
    assert_unchanged,
    ids,
    lora_base,
    lora_gpt,
    randomize_all_adapters,
    snapshot,
)

from lora_teach.lora import (
    LoRAConfig,
    disable_adapter,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from lora_teach.lora_variants import loraplus_param_groups
from lora_teach.serving import (
    BASE_ROW,
    active_adapter,
    adapter_names,
    add_adapter,
    delete_adapter,
    disable_adapter_by_name,
    disabled_adapters,
    enable_adapter_by_name,
    forward_with_adapters,
    set_adapter,
)

TARGETS = LORA_TARGETS
TIGHT = dict(rtol=0, atol=1e-12)
gpt, lora = lora_base, lora_gpt  # the tiny base, and the same base with LoRA on TARGETS


# ------------------------------------------------------------------------------------------- named adapters
def three_adapters():
    model = lora()
    add_adapter(model, "author", LoRAConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj")))
    add_adapter(model, "sentence", LoRAConfig(r=4, alpha=8, target_modules=TARGETS, use_dora=True))
    randomize_all_adapters(model)
    return model


def test_add_set_delete_and_trainable_flags():
    model = three_adapters()
    assert adapter_names(model) == ["default", "author", "sentence"]
    assert active_adapter(model) == "default"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A.default", ".lora_B.default")) for n in trainable)
    set_adapter(model, "author")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.author" for n in lora_layers(model)
                         if n.endswith(("q_proj", "v_proj")) for ab in "AB"}
    assert set(lora_state_dict(model, "author")) == {n.removesuffix(".author") for n in trainable}
    set_adapter(model, "default")
    delete_adapter(model, "author")
    assert adapter_names(model) == ["default", "sentence"]
    assert not any(".author" in n for n, _ in model.named_parameters())


def test_each_adapter_changes_the_output_and_disable_gives_the_base():
    model, base = three_adapters(), gpt()
    x = ids(2, 10)
    outs = {}
    for name in adapter_names(model):
        set_adapter(model, name)
        outs[name] = model(x)[0]
        with disable_adapter(model):
            torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=0)
    assert not torch.allclose(outs["default"], outs["author"]) and not torch.allclose(outs["author"], outs["sentence"])


def test_mixed_batch_rows_equal_their_adapter_merged_alone():
    model, base = three_adapters(), gpt()
    x = ids(5, 12, seed=4)
    names = ["sentence", "author", BASE_ROW, "default", "sentence"]
    mixed = forward_with_adapters(model, x, names)[0]
    for i, name in enumerate(names):
        if name == BASE_ROW:
            alone = base(x[i:i + 1])[0]
        else:
            set_adapter(model, name)
            merge_lora(model)
            alone = model(x[i:i + 1])[0]
            unmerge_lora(model)
        torch.testing.assert_close(mixed[i:i + 1], alone, **TIGHT, msg=f"row {i} ({name})")
    set_adapter(model, "default")
    assert all(not layer._forward_pre_hooks for layer in lora_layers(model).values())  # nothing left on the layers
    torch.testing.assert_close(model(x)[0], forward_with_adapters(model, x, ["default"] * 5)[0], **TIGHT)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_disabling_the_active_adapter_by_name_gives_the_base_and_enabling_restores_it_exactly():
    model, base = three_adapters(), gpt()
    x = ids(2, 10)
    for name in adapter_names(model):
        set_adapter(model, name)
        on, flags = model(x)[0], trainable(model)
        disable_adapter_by_name(model, name)
        assert disabled_adapters(model) == [name] and active_adapter(model) == name
        torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=0)
        assert trainable(model) == set(), "a disabled adapter is frozen, as PEFT freezes the adapters it disables"
        set_adapter(model, "default" if name != "default" else "author")
        set_adapter(model, name)  # making it active again does not switch it on
        torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=0)
        enable_adapter_by_name(model, name)
        assert disabled_adapters(model) == []
        torch.testing.assert_close(model(x)[0], on, rtol=0, atol=0)
        assert trainable(model) == flags


def test_disabling_another_adapter_by_name_leaves_the_active_one_and_its_rows_run_the_base():
    model = three_adapters()
    x = ids(5, 12, seed=4)
    names = ["sentence", "author", BASE_ROW, "default", "author"]
    active, mixed, flags = model(x)[0], forward_with_adapters(model, x, names)[0], trainable(model)
    without = copy.deepcopy(model)  # the model with only the other adapters
    delete_adapter(without, "author")
    as_base = [BASE_ROW if n == "author" else n for n in names]
    disable_adapter_by_name(model, "author")
    disable_adapter_by_name(model, "author")  # a second call does nothing
    assert disabled_adapters(model) == ["author"] and trainable(model) == flags
    torch.testing.assert_close(model(x)[0], active, rtol=0, atol=0)
    off = forward_with_adapters(model, x, names)[0]
    torch.testing.assert_close(off, forward_with_adapters(without, x, as_base)[0], rtol=0, atol=0)
    torch.testing.assert_close(off, forward_with_adapters(model, x, as_base)[0], rtol=0, atol=0)
    for i in (0, 2, 3):
        torch.testing.assert_close(off[i], mixed[i], rtol=0, atol=0)
    assert "disabled_adapters=['author']" in str(model)
    enable_adapter_by_name(model, "author")
    enable_adapter_by_name(model, "author")  # a second call does nothing
    assert disabled_adapters(model) == [] and trainable(model) == flags
    torch.testing.assert_close(forward_with_adapters(model, x, names)[0], mixed, rtol=0, atol=0)
    disable_adapter_by_name(model, "author")
    delete_adapter(model, "author")  # the switch goes with the adapter
    add_adapter(model, "author", LoRAConfig(r=2, alpha=4, target_modules=("q_proj",)))
    assert disabled_adapters(model) == []


def test_the_switch_by_name_is_refused_while_merged_and_blocks_merging_and_saving(tmp_path):
    model = three_adapters()
    set_adapter(model, "author")
    merge_lora(model)
    before, structure = snapshot(model), str(model)
    for switch in (disable_adapter_by_name, enable_adapter_by_name):
        with pytest.raises(ValueError, match=r"merged; call unmerge_lora\(model\) before (dis|en)abling an adapter"):
            switch(model, "author")
    assert_unchanged(model, before)
    assert str(model) == structure and disabled_adapters(model) == []
    unmerge_lora(model)
    with disable_adapter(model):
        with pytest.raises(ValueError, match="inside a disable_adapter"):
            disable_adapter_by_name(model, "sentence")
    assert disabled_adapters(model) == []

    disable_adapter_by_name(model, "author")
    disable_adapter_by_name(model, "default")
    before, structure = snapshot(model), str(model)
    for merge in (merge_lora, merge_and_unload):
        with pytest.raises(ValueError, match=r"the active adapter 'author' is disabled; "
                                             r"enable_adapter_by_name\(model, 'author'\)"):
            merge(model)
    with pytest.raises(ValueError, match=r"'default' adapter is disabled.*enable_adapter_by_name\(model, 'default'\)"):
        save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    for switch in (disable_adapter_by_name, enable_adapter_by_name):
        with pytest.raises(ValueError, match=r"unknown adapter 'nobody'; this model's adapters are \['default'"):
            switch(model, "nobody")
    assert disabled_adapters(model) == ["default", "author"]
    assert_unchanged(model, before)
    assert str(model) == structure and not any(layer.merged for layer in lora_layers(model).values())
    layer = next(m for m in lora_layers(model).values() if "author" in m.lora_A)
    with pytest.raises(ValueError, match="'author' is disabled"):
        layer.merge()
    assert not layer.merged


@pytest.mark.parametrize("call, message", [
    (lambda m: add_adapter(m, "author", LoRAConfig()), "exists already; this model's adapters are"),
    (lambda m: add_adapter(m, "default", LoRAConfig()), "other than 'default'"),
    (lambda m: add_adapter(m, "x", LoRAConfig(target_modules=("k_proj",))), r"match no LoRA layer.*'q_proj'"),
    (lambda m: add_adapter(m, "x", LoRAConfig(init_lora_weights="pissa")), "default adapter only"),
    (lambda m: set_adapter(m, "nobody"), r"unknown adapter 'nobody'; this model's adapters are \['default'"),
    (lambda m: delete_adapter(m, "nobody"), "unknown adapter 'nobody'"),
    (lambda m: delete_adapter(m, "default"), "cannot be deleted"),
    (lambda m: lora_state_dict(m, "nobody"), "unknown adapter"),
    (lambda m: disable_adapter_by_name(m, "nobody"),
     r"unknown adapter 'nobody'; this model's adapters are \['default', 'author', 'sentence'\]"),
    (lambda m: enable_adapter_by_name(m, "nobody"), "unknown adapter 'nobody'; this model's adapters are"),
    (lambda m: disable_adapter_by_name(m, None), "unknown adapter None"),
    (lambda m: forward_with_adapters(m, ids(3, 8), ["author", "default"]), "2 entries for a batch of 3 rows"),
    (lambda m: forward_with_adapters(m, ids(2, 8), ["author", "nobody"]),
     r"unknown adapter names \[\"'nobody'\"\]; allowed: \['default', 'author', 'sentence', '__base__'\]"),
    (lambda m: forward_with_adapters(m, ids(2, 8), "author"), "must be a list"),
    (lambda m: forward_with_adapters(m.train(), ids(2, 8), ["author", "default"]), "call model.eval"),
    (lambda m: loraplus_param_groups(m, lr=1e-3, loraplus_lr_ratio=0), "loraplus_lr_ratio must be a finite number"),
])
def test_named_adapter_calls_refuse_bad_input_before_any_change(call, message):
    model = three_adapters()
    before = snapshot(model)
    structure = str(model)
    with pytest.raises((ValueError, TypeError), match=message):
        call(model)
    model.eval()
    assert_unchanged(model, before)
    assert str(model) == structure and adapter_names(model) == ["default", "author", "sentence"]
    assert disabled_adapters(model) == []


def test_refusals_about_merged_and_active_adapters():
    model = three_adapters()
    set_adapter(model, "author")
    with pytest.raises(ValueError, match="'author' is the active adapter"):
        delete_adapter(model, "author")
    merge_lora(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="merged; call unmerge_lora"):
        forward_with_adapters(model, ids(2, 8), ["author", "default"])
    with pytest.raises(ValueError, match="merged; call unmerge_lora"):
        set_adapter(model, "default")
    assert_unchanged(model, before)




# ------------------------------------------------------------------------------- one mechanism, no call state
def test_a_layer_takes_the_adapter_names_as_an_argument():
    model = three_adapters()
    layer = lora_layers(model)["blocks.0.attn.q_proj"]
    x = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    names = ["author", BASE_ROW, "sentence", "default"]
    mixed = layer(x, adapter_names=names)
    for i, name in enumerate(names):
        layer.active_adapter = name if name != BASE_ROW else "default"
        alone = layer.base_layer(x[i:i + 1]) if name == BASE_ROW else layer(x[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], alone, **TIGHT, msg=f"row {i} ({name})")
    layer.active_adapter = "default"
    with pytest.raises(ValueError, match="one name per row; got 2 names for 4 rows"):
        layer(x, adapter_names=names[:2])


def test_the_mixed_batch_leaves_other_threads_calls_alone():
    """The hooks that pass the names act in the calling thread only: a plain call from another thread, made
    while the mixed batch is half-way through the model, runs as always."""
    model = three_adapters()
    x = ids(3, 10, seed=5)
    plain = model(x)[0]
    main, inside, done, seen = threading.get_ident(), threading.Event(), threading.Event(), {}

    def pause_the_mixed_batch(module, args, output):
        if threading.get_ident() == main:
            inside.set()
            done.wait(timeout=30)

    def plain_call_meanwhile():
        inside.wait(timeout=30)
        seen["plain"] = model(x)[0]
        done.set()

    handle = lora_layers(model)["blocks.0.attn.q_proj"].register_forward_hook(pause_the_mixed_batch)
    worker = threading.Thread(target=plain_call_meanwhile)
    worker.start()
    forward_with_adapters(model, x, ["author", "sentence", BASE_ROW])
    handle.remove()
    worker.join(timeout=30)
    assert done.is_set()
    torch.testing.assert_close(seen["plain"], plain, rtol=0, atol=0)


def test_disable_adapter_switches_every_adapter_off_and_restores_the_switches():
    model, base = three_adapters(), gpt()
    x = ids(5, 12, seed=4)
    disable_adapter_by_name(model, "author")
    with disable_adapter(model):
        torch.testing.assert_close(model(x)[0], base(x)[0], rtol=0, atol=0)
        rows = forward_with_adapters(model, x, ["sentence", "author", BASE_ROW, "default", "sentence"])[0]
        torch.testing.assert_close(rows, base(x)[0], rtol=0, atol=0)
        with pytest.raises(ValueError, match="inside a disable_adapter"):
            enable_adapter_by_name(model, "author")
    assert disabled_adapters(model) == ["author"]
    assert not torch.allclose(model(x)[0], base(x)[0])
