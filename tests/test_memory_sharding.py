"""lora_teach.memory's sharding arithmetic against the papers: ZeRO's Figure 1 (7.5 B parameters on 64 GPUs) and
Answer.AI's FSDP-QLoRA (a 70 B model on two 24 GB GPUs), the stages and offload in every precision mode, the
fewest GPUs a fine-tune needs, and the calculator of notebook 15."""

from __future__ import annotations

import pytest

from lora_teach import memory as M


def test_zero_paper_figure_1_per_gpu_model_states():
    """Rajbhandari et al. (2020), Figure 1: 7.5 B parameters, 64 GPUs, mixed-precision Adam (K = 12)."""
    fig = M.zero_paper_figure1()
    assert fig["paper_gb"] == {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, paper in fig["paper_gb"].items():
        assert round(fig["ours_gb"][stage], 1) == paper, (stage, fig["ours_gb"][stage])


@pytest.mark.parametrize("stage, per_gpu", [(0, 16), (1, 4 + 12 / 64), (2, 2 + 14 / 64), (3, 16 / 64)])
def test_the_stages_are_the_papers_formulas(stage, per_gpu):
    psi = M.ZERO_PAPER_MODEL.n_params
    e = M.sharded_memory(M.ZERO_PAPER_MODEL, "full", gpus=64, stage=stage, precision="bf16-mixed", batch=0)
    assert e["model_states"] == pytest.approx(per_gpu * psi)
    assert e["activations"] == e["logits"] == e["cpu"] == 0
    assert (e["gathered"] > 0) is (stage == 3)


def test_fsdp_strategies_are_zero_stages():
    assert M.FSDP_STRATEGIES == {"NO_SHARD": 0, "SHARD_GRAD_OP": 2, "FULL_SHARD": 3}


def test_fsdp_qlora_70b_on_two_24_gb_gpus():
    """Answer.AI (2024): LLaMA-2 70B in 4 bits (their 'from 140 GB to 35 GB'), FSDP over two 24 GB GPUs."""
    r = M.fsdp_qlora_70b(seq=512)
    nf4_base = M.MODEL_SIZES["70b"].block_linear_params * M.NF4_BITS / 8
    assert 34e9 < nf4_base < 36e9  # the blog's 35 GB
    assert r["fits_two"] and not r["fits_one"] and not r["fits_bf16_base_two"]
    two = r["two_gpus"]
    assert two["weights"] == pytest.approx(r["one_gpu"]["weights"] / 2)  # FULL_SHARD halves the frozen base
    assert 20e9 < two["total"] < 23e9
    longer = M.fsdp_qlora_70b(seq=2048)
    assert not longer["fits_two"]  # 2,048 tokens need what they also used: CPU offload
    assert M.fsdp_qlora_70b(seq=2048, offload="all")["fits_two"]


MODES = [(method, precision) for method in ("full", "lora") for precision in M.PRECISIONS
         if not (method == "full" and precision == "qlora")]  # full fine-tuning has no 4-bit base


@pytest.mark.parametrize("method, precision", MODES)
def test_every_precision_mode_shards_its_own_parts(method, precision):
    one = M.memory_estimate("7b", method, 16, "all linear", precision)
    kw = dict(r=16, targets="all linear", precision=precision, batch=0)
    for stage, (w, g, o) in {0: (1, 1, 1), 1: (1, 1, 8), 2: (1, 8, 8), 3: (8, 8, 8)}.items():
        e = M.sharded_memory("7b", method, gpus=8, stage=stage, **kw)
        assert e["weights"] == pytest.approx(one["weights"] / w)
        assert e["gradients"] == pytest.approx(one["gradients"] / g)
        assert e["optimizer"] == pytest.approx(one["optimizer"] / o)
    off = M.sharded_memory("7b", method, gpus=8, stage=2, offload="optimizer", **kw)
    assert off["optimizer"] == 0 and off["cpu"] == pytest.approx(one["optimizer"] / 8)
    everything = M.sharded_memory("7b", method, gpus=8, stage=3, offload="all", **kw)
    assert everything["model_states"] == 0
    assert everything["cpu"] == pytest.approx(one["total"] / 8)
    assert 0 < everything["total"] == everything["gathered"]


def test_with_lora_only_full_sharding_shrinks_the_memory_much():
    kw = dict(gpus=8, r=16, targets="all linear", precision="bf16-mixed", batch=0)
    per_stage = [M.sharded_memory("70b", "lora", stage=s, **kw)["model_states"] for s in range(4)]
    assert per_stage[2] > 0.95 * per_stage[0]  # ZeRO-1 and -2 split what LoRA barely has
    assert per_stage[3] < 0.2 * per_stage[0]


def test_gpus_needed():
    assert M.gpus_needed("70b", "lora", "RTX 3090/4090 24 GB", stage=3, r=16, targets="all linear",
                         precision="qlora", seq=512) == 2
    assert M.gpus_needed("70b", "lora", "RTX 3090/4090 24 GB", stage=0, r=16, targets="all linear",
                         precision="qlora", seq=512) is None
    n = M.gpus_needed("70b", "full", "A100 80 GB", stage=3, seq=512)
    fits = [M.sharded_memory("70b", "full", gpus=k, stage=3, seq=512)["total"] <= 80e9 - M.GPU_RESERVED
            for k in (n - 1, n)]
    assert fits == [False, True]
    assert M.gpus_needed("tiny", "full", "T4 16 GB", stage=0) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(gpus=0), "gpus must be a positive int"),
    (dict(gpus=2.0), "gpus must be a positive int"),
    (dict(stage=4), "stage must be one of"),
    (dict(stage="FULL_SHARD"), "FSDP's strategies are"),
    (dict(offload="disk"), "offload must be one of"),
    (dict(stage=0, offload="optimizer"), "needs stage 1 or more"),
    (dict(stage=2, offload="all"), "needs stage 3"),
    (dict(batch=-1), "batch must be an int >= 0"),
    (dict(precision="fp8"), "precision must be one of"),
])
def test_bad_sharding_arguments_are_refused_with_the_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        M.sharded_memory("7b", "full", **kwargs)


def test_gpus_needed_refuses_an_unknown_gpu():
    with pytest.raises(ValueError, match="gpu must be one of"):
        M.gpus_needed("7b", "full", "V100")


def test_the_calculator_shows_gpus_needed():
    from lora_teach.widgets import GPUCountCalculator

    calc = GPUCountCalculator()
    counts = calc.counts()
    assert counts["RTX 3090/4090 24 GB"]["ZeRO-3 FULL_SHARD"] == 2
    assert counts["RTX 3090/4090 24 GB"]["replicated (DDP)"] is None
    assert "2 x RTX 3090/4090 24 GB" in calc.description
    before = calc.png()
    calc.method.value = "full"  # QLoRA has no full fine-tuning: the precision moves to bf16-mixed
    assert calc.state["precision"] == "bf16-mixed" and calc.png() != before
    assert calc.counts()["A100 80 GB"]["ZeRO-3 FULL_SHARD"] == M.gpus_needed("70b", "full", "A100 80 GB", stage=3,
                                                                             precision="bf16-mixed", seq=512)
    with pytest.raises(ValueError, match="model must be one of"):
        GPUCountCalculator(model="gpt5")
    with pytest.raises(ValueError, match="no frozen base"):
        GPUCountCalculator(method="full", precision="qlora")
