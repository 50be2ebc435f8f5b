"""The preflight in its own interpreter (as the web process runs it), and the web process stays torch-free."""

import json
import subprocess
import sys

import pytest

from training.preflight import check_in_subprocess

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


def test_the_preflight_marks_the_answer_tokens_as_the_ones_carrying_loss(tiny_model):
    result = check_in_subprocess(
        base_model=tiny_model, config={"method": "sft_dpo", "max_length": 128}, records=RECORDS
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
    assert result["stats"] == {"model_type": "llama", "model_max_length": 256, "sft_examples": 2, "dpo_pairs": 1}


def test_a_prompt_that_fills_max_length_is_caught(tiny_model):
    long = [{**RECORDS[0], "messages": [{"role": "user", "content": "word " * 200}]}]
    result = check_in_subprocess(base_model=tiny_model, config={"method": "sft", "max_length": 32}, records=long)
    assert not result["ok"]
    assert "1 example(s) lose their whole answer at max_length 32" in result["errors"][0]


def test_a_missing_model_or_a_model_without_chat_template_is_named(tiny_model, tmp_path):
    result = check_in_subprocess(base_model=str(tmp_path / "nowhere"), config={"method": "sft"}, records=RECORDS)
    assert not result["ok"] and "Cannot read the base model" in result["errors"][0]
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    result = check_in_subprocess(base_model=str(bare), config={"method": "sft", "max_length": 128}, records=RECORDS)
    assert not result["ok"] and "has no chat template" in result["errors"][0]


@pytest.mark.parametrize("module", ["training.views", "training.services", "training.tasks", "training.urls"])
def test_the_web_side_never_imports_the_training_stack(module):
    code = (
        "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup(); "
        f"import {module}, config.urls; "
        "bad = [m for m in ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
