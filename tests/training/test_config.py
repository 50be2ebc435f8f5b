"""The config dataclass and the auto-config chooser: pure Python, no torch, no database."""

import pytest

from training import autoconfig
from training.autoconfig import GIB, ModelShape
from training.config import TrainingConfig, config_help

LLAMA_1B = ModelShape(
    hidden_size=2048, intermediate_size=8192, num_layers=16, vocab_size=128256, num_params=1_235_814_400
)
LLAMA_8B = ModelShape(
    hidden_size=4096, intermediate_size=14336, num_layers=32, vocab_size=128256, num_params=8_030_261_248
)


def test_the_defaults_are_qlora_nf4_with_double_quant_and_bf16_compute():
    config = TrainingConfig()
    assert (config.load_in_4bit, config.quant_type, config.double_quant, config.compute_dtype) == (
        True,
        "nf4",
        True,
        "bfloat16",
    )
    assert config.target_modules == ["all-linear"] and config.lora_r == 16


def test_every_field_has_a_one_line_help():
    helps = config_help()
    assert set(helps) >= {"lora_r", "dpo_beta", "packing", "seed", "max_length"}
    assert all(h and "\n" not in h for h in helps.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "ppo"}, "method 'ppo' is unknown: choose sft, dpo or sft_dpo"),
        ({"lora_r": 0}, "lora_r must be at least 1"),
        ({"epochs": 0, "max_steps": 0}, "the job would train for no steps"),
        ({"batch_size": 0}, "batch_size must be a positive whole number or auto"),
        ({"lora_dropout": 1.5}, "lora_dropout must be in [0, 1)"),
        ({"gradient_checkpointing": "maybe"}, "gradient_checkpointing must be auto, on or off"),
    ],
)
def test_impossible_settings_are_refused_in_words(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TrainingConfig(**changes)


def test_an_unknown_stored_field_is_an_error_not_silently_dropped():
    with pytest.raises(ValueError, match="Unknown config field.*max_seq_length"):
        TrainingConfig.from_dict({"max_seq_length": 512})


def test_the_config_round_trips_through_json():
    config = TrainingConfig(method="sft_dpo", lora_r=8, target_modules=["q_proj", "v_proj"])
    assert TrainingConfig.from_dict(config.to_dict()) == config
    assert config.phases == ["sft", "dpo"]


def test_a_1b_model_on_an_h200_trains_without_checkpointing_at_a_large_batch_with_liger():
    choice = autoconfig.choose(
        LLAMA_1B, method="sft", max_length=1024, free_bytes=139 * GIB, liger_available=True, varlen_attention=True
    )
    assert choice.gradient_checkpointing is False
    assert choice.batch_size == 16
    assert choice.liger_kernel and choice.padding_free
    assert choice.estimated_peak_bytes < 139 * GIB * autoconfig.MEMORY_HEADROOM


def test_dpo_counts_two_sequences_per_pair():
    sft = autoconfig.choose(LLAMA_1B, method="sft", max_length=1024, free_bytes=139 * GIB, liger_available=True)
    dpo = autoconfig.choose(LLAMA_1B, method="dpo", max_length=1024, free_bytes=139 * GIB, liger_available=True)
    assert dpo.batch_size == sft.batch_size // 2
    assert dpo.padding_free is False


def test_a_small_gpu_turns_checkpointing_on_rather_than_train_at_a_tiny_batch():
    choice = autoconfig.choose(LLAMA_8B, method="sft", max_length=2048, free_bytes=16 * GIB, liger_available=False)
    assert choice.gradient_checkpointing is True
    assert choice.batch_size >= 1
    assert choice.estimated_peak_bytes <= 16 * GIB * autoconfig.MEMORY_HEADROOM
    assert any("liger-kernel is not installed" in r for r in choice.reasons)


def test_the_estimate_matches_the_measured_1b_figures_within_a_third():
    # Measured on an H200: checkpointing off + liger, seq 1024: batch 8 → 10.7 GiB, batch 16 → 20.2 GiB.
    fixed = autoconfig.weight_bytes(LLAMA_1B, load_in_4bit=True, lora_r=16) + autoconfig.FIXED_OVERHEAD
    per_token = autoconfig.activation_bytes_per_token(LLAMA_1B, checkpointing=False, liger=True)
    for batch, measured in ((8, 10.7), (16, 20.2)):
        estimate = (fixed + batch * 1024 * per_token) / GIB
        assert abs(estimate - measured) / measured < 0.33, (batch, estimate)


def test_explicit_settings_are_kept_as_given():
    choice = autoconfig.choose(
        LLAMA_1B,
        method="sft",
        max_length=1024,
        free_bytes=139 * GIB,
        batch_size=2,
        gradient_checkpointing="on",
        liger_kernel="off",
        liger_available=True,
    )
    assert (choice.batch_size, choice.gradient_checkpointing, choice.liger_kernel) == (2, True, False)


def test_a_model_that_cannot_fit_says_so():
    with pytest.raises(ValueError, match="needs about .* GiB for its weights alone but the GPU has 2.0 GiB free"):
        autoconfig.choose(LLAMA_8B, method="sft", max_length=1024, free_bytes=2 * GIB)


def test_on_a_cpu_the_choice_is_small_and_safe():
    choice = autoconfig.choose(LLAMA_1B, method="sft", max_length=1024, free_bytes=None, liger_available=True)
    assert (choice.batch_size, choice.gradient_checkpointing, choice.liger_kernel) == (4, False, False)


def test_the_shape_is_read_from_a_model_config():
    class Cfg:
        hidden_size, intermediate_size, num_hidden_layers, vocab_size = 2048, 8192, 16, 128256
        num_attention_heads, num_key_value_heads, head_dim, tie_word_embeddings = 32, 8, 64, True

    shape = ModelShape.from_config(Cfg())
    assert abs(shape.num_params - LLAMA_1B.num_params) / LLAMA_1B.num_params < 0.01


def test_packing_on_a_gpu_needs_a_variable_length_attention_kernel():
    without = autoconfig.choose(LLAMA_1B, method="sft", max_length=1024, free_bytes=139 * GIB)
    assert without.padding_free is False
    assert any("install flash-attn" in r for r in without.reasons)
    on_cpu = autoconfig.choose(LLAMA_1B, method="sft", max_length=1024, free_bytes=None)
    assert on_cpu.padding_free is True  # correct with SDPA's block mask; speed does not matter there
