"""Merge a trained LoRA adapter into its base model, for serving without peft."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Merge an adapter (a job's adapter/ folder) into a full-precision copy of its base model and save the "
        "result. The base is loaded in bf16 (or --dtype), never 4-bit: merging into a quantized base is lossy."
    )

    def add_arguments(self, parser):
        parser.add_argument("adapter", help="The adapter folder (holds adapter_config.json and manifest.json).")
        parser.add_argument("output", help="Where to save the merged model and tokenizer.")
        parser.add_argument("--base", help="Base model path or hub id (default: the one in manifest.json).")
        parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])

    def handle(self, *args, adapter, output, base=None, dtype="bfloat16", **options):
        adapter_dir = Path(adapter)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise CommandError(f"{adapter_dir} holds no adapter_config.json: give a job's adapter/ folder.")
        if base is None:
            manifest = adapter_dir / "manifest.json"
            if not manifest.is_file():
                raise CommandError(f"{adapter_dir} has no manifest.json: name the base model with --base.")
            info = json.loads(manifest.read_text())["base_model"]
            base = info.get("path") or info.get("id")
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(output)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(output)
        if (adapter_dir / "manifest.json").is_file():
            (Path(output) / "goldset_manifest.json").write_text((adapter_dir / "manifest.json").read_text())
        self.stdout.write(self.style.SUCCESS(f"Merged {adapter_dir} into {base}: saved to {output}"))
