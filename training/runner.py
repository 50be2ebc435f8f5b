"""Train a QLoRA adapter from snapshot records: load model → build trainer → train → save.

Django-free: the Celery task hands in plain records and a progress sink. The same code path trains a
tiny model from a temp dir in tests and a real model from a local path or a hub id in production.
Multi-GPU: run this module under ``accelerate launch`` (see ``training.launch``); every process runs
the same code and only the main process writes progress and artifacts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from training import autoconfig
from training.callbacks import ProgressCallback, ProgressSink
from training.config import TrainingConfig

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "liger-kernel")


class TrainingError(Exception):
    """A failure with a message a person can act on (shown on the job page)."""


@dataclass
class RunResult:
    status: str  # "succeeded" | "cancelled"
    adapter_dir: Path | None
    manifest: dict
    metrics: dict = field(default_factory=dict)
    last_checkpoint: str = ""


# --- data ----------------------------------------------------------------------------------------


def sft_rows(records: list[dict], *, sft_on_chosen: bool) -> list[dict]:
    """Prompt–completion rows (conversational), so the loss falls on the answer only."""
    rows = []
    for r in records:
        if r["kind"] == "sft":
            rows.append({"prompt": r["messages"], "completion": [{"role": "assistant", "content": r["completion"]}]})
        elif r["kind"] == "dpo" and sft_on_chosen:
            rows.append({"prompt": r["messages"], "completion": [{"role": "assistant", "content": r["chosen"]}]})
    return rows


def dpo_rows(records: list[dict]) -> list[dict]:
    return [
        {
            "prompt": r["messages"],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in records
        if r["kind"] == "dpo"
    ]


# --- hardware and provenance ---------------------------------------------------------------------


def hardware() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    else:
        info["gpus"] = []
    info["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return info


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_fingerprint(base_model: str) -> dict:
    """Where the base came from: a local dir gets a sha256 over its files; a hub id its resolved revision."""
    path = Path(base_model)
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return {"source": "local", "path": str(path), "sha256": digest.hexdigest()}
    return {"source": "hub", "id": base_model, "revision": None}


def free_gpu_bytes() -> int | None:
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def flash_attention_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        metadata.version("flash-attn")
    except metadata.PackageNotFoundError:
        return False
    return True


def liger_available() -> bool:
    try:
        metadata.version("liger-kernel")
    except metadata.PackageNotFoundError:
        return False
    return torch.cuda.is_available()


# --- model ---------------------------------------------------------------------------------------


def load_tokenizer(base_model: str):
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TrainingError(
            f"The tokenizer of {base_model} has no chat template: use an instruct/chat model, or add a "
            f"chat_template to its tokenizer_config.json."
        )
    return tokenizer


def compute_dtype(config: TrainingConfig) -> torch.dtype:
    return getattr(torch, config.compute_dtype)


def load_model(base_model: str, config: TrainingConfig):
    """The base model, 4-bit NF4 with double quantization when load_in_4bit (QLoRA)."""
    kwargs: dict = {"dtype": compute_dtype(config)}
    if config.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.quant_type,
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=compute_dtype(config),
            bnb_4bit_quant_storage=compute_dtype(config),
        )
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    else:
        kwargs["device_map"] = {"": "cpu"}
    if flash_attention_available() and config.compute_dtype != "float32":
        kwargs["attn_implementation"] = "flash_attention_2"
    else:
        kwargs["attn_implementation"] = "sdpa"
    try:
        return AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    except OSError as exc:
        raise TrainingError(
            f"Cannot load the base model {base_model!r}: {exc}. Give a local directory with config.json and "
            f"weights, or a hub id this worker can reach."
        ) from exc


def lora_config(config: TrainingConfig) -> LoraConfig:
    targets = config.target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        task_type="CAUSAL_LM",
    )


def count_4bit_layers(model) -> tuple[int, int]:
    """(4-bit linear layers, all linear layers) in the base model."""
    import bitsandbytes as bnb

    four = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    linear = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear | bnb.nn.Linear4bit))
    return four, linear


# --- the trainer ---------------------------------------------------------------------------------


def trainer_args(config: TrainingConfig, *, phase: str, output_dir: Path, choice: autoconfig.AutoChoice) -> dict:
    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": choice.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "learning_rate": config.learning_rate if phase == "sft" else config.dpo_learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_ratio,  # below 1: a share of the steps
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "optim": config.optimizer,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps > 0 else -1,
        "max_length": config.max_length,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not on_gpu,
        "bf16": on_gpu and config.compute_dtype == "bfloat16",
        "fp16": on_gpu and config.compute_dtype == "float16",
        "activation_checkpointing": choice.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if choice.gradient_checkpointing else None,
        "use_liger_kernel": choice.liger_kernel,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
        # DDP: LoRA leaves most parameters frozen, so there is nothing unused to search for.
        "ddp_find_unused_parameters": False if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    }


def choose_settings(model, config: TrainingConfig, *, phase: str) -> autoconfig.AutoChoice:
    shape = autoconfig.ModelShape.from_config(model.config, num_params=None)
    return autoconfig.choose(
        shape,
        method=phase,
        max_length=config.max_length,
        free_bytes=free_gpu_bytes(),
        load_in_4bit=config.load_in_4bit,
        lora_r=config.lora_r,
        packing=config.packing,
        liger_available=liger_available(),
        varlen_attention=flash_attention_available(),
        batch_size=config.batch_size,
        gradient_checkpointing=config.gradient_checkpointing,
        liger_kernel=config.liger_kernel,
    )


def build_trainer(*, phase, model, tokenizer, config, rows, output_dir, choice, callback, peft_config):
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    args = trainer_args(config, phase=phase, output_dir=output_dir, choice=choice)
    dataset = Dataset.from_list(rows)
    if phase == "sft":
        sft_args = SFTConfig(**args, packing=choice.padding_free, padding_free=choice.padding_free)
        return SFTTrainer(
            model=model,
            args=sft_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
    dpo_args = DPOConfig(**args, beta=config.dpo_beta)
    return DPOTrainer(
        model=model,
        ref_model=None,  # the reference is the same model with the adapter switched off
        args=dpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )


def last_checkpoint(phase_dir: Path) -> Path | None:
    checkpoints = [p for p in phase_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1]), default=None)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run(
    *,
    base_model: str,
    config: TrainingConfig,
    records: list[dict],
    output_dir: Path,
    sink: ProgressSink,
    resume_from: Path | None = None,
    provenance: dict | None = None,
) -> RunResult:
    """Train every phase of ``config.method`` and write adapter, tokenizer and manifest.json to output_dir."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        tokenizer = load_tokenizer(base_model)
    except OSError as exc:
        raise TrainingError(
            f"Cannot load the tokenizer of {base_model!r}: {exc}. Give a local directory with the tokenizer "
            f"files, or a hub id this worker can reach."
        ) from exc
    phases_done: dict[str, dict] = {}
    previous_adapter: Path | None = None
    status = "succeeded"
    checkpoint = ""
    revision = None

    for phase in config.phases:
        phase_dir = output_dir / phase
        adapter_dir = phase_dir / "adapter"
        rows = sft_rows(records, sft_on_chosen=config.sft_on_chosen) if phase == "sft" else dpo_rows(records)
        if not rows:
            raise TrainingError(
                f"The snapshot has no {phase.upper()} examples: choose a method that matches its data "
                f"({'gold answers' if phase == 'sft' else 'preference pairs'} are needed for {phase.upper()})."
            )
        # A resumed job reuses the phases its predecessor finished and continues from its last checkpoint.
        resume_checkpoint = None
        if resume_from is not None:
            done = Path(resume_from) / phase / "adapter"
            if done.is_dir():
                shutil.copytree(done, adapter_dir, dirs_exist_ok=True)
                sink.log(f"[{phase}] reusing the finished {phase.upper()} adapter of the resumed job")
                phases_done[phase] = {"reused_from": str(done)}
                previous_adapter = adapter_dir
                continue
            found = last_checkpoint(Path(resume_from) / phase)
            if found is not None:
                resume_checkpoint = str(found)
                sink.log(f"[{phase}] resuming from {found.name}")

        model = load_model(base_model, config)
        revision = revision or getattr(model.config, "_commit_hash", None)
        four_bit, linear = count_4bit_layers(model)
        sink.log(f"[{phase}] base model loaded: {four_bit} of {linear} linear layers in 4 bits")
        if previous_adapter is not None:
            # SFT → DPO: train the SFT adapter further; TRL keeps a frozen copy as the DPO reference.
            model = PeftModel.from_pretrained(model, str(previous_adapter), is_trainable=True)
            peft_config = None
        else:
            peft_config = lora_config(config)
        choice = choose_settings(model, config, phase=phase)
        for reason in choice.reasons:
            sink.log(f"[{phase}] {reason}")
        callback = ProgressCallback(sink, phase=phase)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer = build_trainer(
            phase=phase,
            model=model,
            tokenizer=tokenizer,
            config=config,
            rows=rows,
            output_dir=phase_dir,
            choice=choice,
            callback=callback,
            peft_config=peft_config,
        )
        result = trainer.train(resume_from_checkpoint=resume_checkpoint)
        loss = result.training_loss
        if (
            loss is None
            or not math.isfinite(loss)
            or (callback.last_loss is not None and not math.isfinite(callback.last_loss))
        ):
            raise TrainingError(
                f"The {phase.upper()} loss became {loss} (not a finite number): lower the learning rate "
                f"(now {trainer.args.learning_rate}) or check the snapshot for empty answers."
            )
        found = last_checkpoint(phase_dir)
        checkpoint = str(found) if found else checkpoint
        phases_done[phase] = {
            "train_loss": loss,
            "steps": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "examples": len(rows),
            "base_linear_layers_4bit": four_bit,
            "base_linear_layers": linear,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "runtime_s": result.metrics.get("train_runtime"),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "last_log": next((h for h in reversed(trainer.state.log_history) if "loss" in h), {}),
            "settings": {
                "batch_size": choice.batch_size,
                "activation_checkpointing": choice.gradient_checkpointing,
                "liger_kernel": choice.liger_kernel,
                "padding_free": choice.padding_free,
                "reasons": choice.reasons,
            },
        }
        if callback.stopped_by_request:
            status = "cancelled"
            sink.log(f"[{phase}] cancelled at step {trainer.state.global_step}; checkpoint kept: {checkpoint}")
            break
        if is_main_process():
            save_model = trainer.model
            if isinstance(save_model, PeftModel) and "ref" in save_model.peft_config:
                save_model.save_pretrained(str(adapter_dir), selected_adapters=["default"])
            else:
                save_model.save_pretrained(str(adapter_dir))
            tokenizer.save_pretrained(str(adapter_dir))
        previous_adapter = adapter_dir
        del trainer, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    final_dir = None
    if status == "succeeded" and previous_adapter is not None and is_main_process():
        final_dir = output_dir / "adapter"
        if final_dir.exists():
            shutil.rmtree(final_dir)
        shutil.copytree(previous_adapter, final_dir)
    manifest = {
        **(provenance or {}),
        "status": status,
        "base_model": {**model_fingerprint(base_model), **({"revision": revision} if revision else {})},
        "method": config.method,
        "config": config.to_dict(),
        "library_versions": library_versions(),
        "hardware": hardware(),
        "metrics": phases_done,
        "records": len(records),
        "last_checkpoint": checkpoint,
        "started_at": started,
        "finished_at": time.time(),
    }
    if is_main_process():
        target = final_dir or output_dir
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return RunResult(
        status=status, adapter_dir=final_dir, manifest=manifest, metrics=phases_done, last_checkpoint=checkpoint
    )
