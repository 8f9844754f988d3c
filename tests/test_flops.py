"""FLOP and parameter accounting against known models and transformers' own count."""

from __future__ import annotations

import pytest

from ominix.config import load_config
from ominix.flops import flops_per_token, format_mfu, mfu, num_params, param_counts, peak_flops


def test_llama2_7b_has_6_74_billion_parameters() -> None:
    cfg = load_config("llama2-7b").model
    assert num_params(cfg) == 6_738_415_616  # the published LLaMA-2 7B count


def test_tinyllama_has_1_1_billion_parameters() -> None:
    assert num_params(load_config("tinyllama-1.1b").model) == 1_100_048_384


def test_counts_match_transformers_model() -> None:
    from transformers import LlamaForCausalLM

    from ominix.model import hf_config

    cfg = load_config("tiny").model
    hf = LlamaForCausalLM(hf_config(cfg))
    assert num_params(cfg) == sum(p.numel() for p in hf.parameters())


def test_flops_formula_is_6n_plus_attention() -> None:
    cfg = load_config("llama2-7b").model
    c = param_counts(cfg)
    non_embedding = c["total"] - c["embedding"] - c["lm_head"]
    expected = 6 * (non_embedding + c["lm_head"]) + 12 * 32 * 4096 * 4096
    assert flops_per_token(cfg, 4096) == expected


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
     ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362e12), ("cpu", None), ("Weird GPU", None)],
)
def test_peak_table(name: str, peak: float | None) -> None:
    assert peak_flops(name) == peak


def test_mfu_unknown_device_is_na() -> None:
    assert format_mfu(mfu(1000.0, 1e9, None)) == "n/a"
    assert format_mfu(mfu(98_900.0, 1e10, 989e12)) == "100.0%"
