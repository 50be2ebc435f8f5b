"""The preflight (what the preflight worker runs), and the web process stays torch-free."""

import json
import subprocess
import sys

import pytest

from training.preflight import check

RECORDS = [
    {
        "kind": "sft",
        "messages": [{"role": "user", "content": "How do I reset my password?"}],
        "completion": "Open settings.",
        "chosen": "",
        "rejected": "",
        "source_item_id": 7,
    },
    {
        "kind": "dpo",
        "messages": [{"role": "user", "content": "Refund?"}],
        "completion": "",
        "chosen": "Yes, within thirty days.",
        "rejected": "No.",
        "source_item_id": 8,
    },
]


@pytest.mark.training
def test_the_preflight_marks_the_answer_tokens_as_the_ones_carrying_loss(tiny_model):
    seen = []
    result = check(
        base_model=tiny_model,
        config={"method": "sft_dpo", "max_length": 128},
        records=RECORDS,
        progress=lambda share, stage: seen.append(share),
    )
    assert result["ok"], result["errors"]
    first = result["samples"][0]
    loss_text = "".join(p["text"] for p in first["pieces"] if p["loss"])
    context = "".join(p["text"] for p in first["pieces"] if not p["loss"])
    assert loss_text == "Open settings.<|end|>"
    assert "How do I reset my password?" in context and "<|assistant|>" in context
    # Two SFT rows (the gold answer, and the chosen side of the pair), then the first pair, both sides.
    assert [(s["kind"], s.get("side")) for s in result["samples"]] == [
        ("sft", None),
        ("sft", None),
        ("dpo", "chosen"),
        ("dpo", "rejected"),
    ]
    stats = result["stats"]
    assert (stats["model_type"], stats["model_max_length"], stats["sft_examples"], stats["dpo_pairs"]) == (
        "llama",
        256,
        2,
        1,
    )
    assert stats["fit"]["sft"]["kept"] == 2 and stats["fit"]["dpo"]["kept"] == 1
    assert seen[-1] == 1.0 and seen == sorted(seen)  # progress only moves forward


@pytest.mark.training
def test_a_prompt_that_fills_max_length_is_cut_from_the_left_keeping_the_system_turn_and_the_answer(tiny_model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 200 + "Reset?"}]
    long = [{**RECORDS[0], "messages": messages}]
    result = check(base_model=tiny_model, config={"method": "sft", "max_length": 32}, records=long)
    assert result["ok"], result["errors"]
    sample = result["samples"][0]
    assert sample["truncated"] and sample["tokens"] <= 32 < sample["original_tokens"]
    text = "".join(p["text"] for p in sample["pieces"])
    assert text.startswith("<|system|>Be brief.<|end|><|user|>") and "Reset?" in text
    assert "".join(p["text"] for p in sample["pieces"] if p["loss"]) == "Open settings.<|end|>"
    assert result["stats"]["fit"]["sft"]["prompt_truncated"] == 1
    assert "their prompt is cut from the left" in result["warnings"][0]


@pytest.mark.training
def test_an_answer_longer_than_max_length_is_left_out_and_counted(tiny_model):
    records = [RECORDS[0], {**RECORDS[0], "completion": "word " * 100, "source_item_id": 9}]
    result = check(base_model=tiny_model, config={"method": "sft", "max_length": 32}, records=records)
    assert result["ok"] and result["stats"]["fit"]["sft"]["left_out"] == 1
    assert "1 SFT example(s) will be left out" in result["warnings"][0] and "items 9" in result["warnings"][0]
    only_long = check(base_model=tiny_model, config={"method": "sft", "max_length": 32}, records=records[1:])
    assert not only_long["ok"]
    assert "Every SFT example is longer than max_length 32 even with its prompt cut" in only_long["errors"][0]


@pytest.mark.training
def test_a_missing_model_or_a_model_without_chat_template_is_named(tiny_model, tmp_path):
    result = check(base_model=str(tmp_path / "nowhere"), config={"method": "sft"}, records=RECORDS)
    assert not result["ok"] and "Cannot read the base model" in result["errors"][0]
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    result = check(base_model=str(bare), config={"method": "sft", "max_length": 128}, records=RECORDS)
    assert not result["ok"] and "has no chat template" in result["errors"][0]


@pytest.mark.parametrize(
    "module", ["training.views", "training.services", "training.selectors", "training.tasks", "training.urls"]
)
def test_the_web_side_never_imports_the_training_stack(module):
    code = (
        "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup(); "
        f"import {module}, config.urls; "
        "bad = [m for m in ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
