"""Train a QLoRA adapter from snapshot records: load model → build trainer → train → save.

Django-free: the Celery task hands in plain records and a progress sink. The same code path trains a
tiny model from a temp dir in tests and a real model from a local path or a hub id in production.
Multi-GPU: run this module under ``accelerate launch`` (see ``training.launch``); every process runs
the same code, rank 0 decides the settings for all (``training.ranks``) and only rank 0 writes progress
and artifacts.

``run`` trains each phase of the method in turn (``train_phase``: load → build → train → save) and
ends with ``write_manifest``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import cast_adapter_dtype
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig, DPOTrainer, ModelConfig, SFTConfig, SFTTrainer, get_peft_config, get_quantization_config

from training import autoconfig, examples, ranks
from training.callbacks import NonFiniteError, ProgressCallback, ProgressSink
from training.config import TrainingConfig
from training.errors import TrainingError
from training.provenance import BaseModelRecord, code_version, hardware, library_versions

__all__ = ["TrainingError", "RunResult", "run"]


@dataclass
class RunResult:
    status: str  # "succeeded" | "cancelled"
    adapter_dir: Path | None
    manifest: dict
    metrics: dict = field(default_factory=dict)
    last_checkpoint: str = ""


# --- devices -------------------------------------------------------------------------------------


def free_gpu_bytes() -> int | None:
    """Free memory of this rank's GPU (``ranks.start`` bound it), or None without one."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.cuda.current_device())
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


# --- load ----------------------------------------------------------------------------------------


def load_tokenizer(base_model: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except OSError as exc:
        raise TrainingError(
            f"Cannot load the tokenizer of {base_model!r}: {exc}. Give a local directory with the tokenizer "
            f"files, or a hub id this worker can reach."
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TrainingError(
            f"The tokenizer of {base_model} has no chat template: use an instruct/chat model, or add a "
            f"chat_template to its tokenizer_config.json."
        )
    return tokenizer


def model_args(base_model: str, config: TrainingConfig) -> ModelConfig:
    """The job's model settings in TRL's own terms, so TRL's helpers build the quantization and LoRA configs."""
    args = ModelConfig(
        model_name_or_path=base_model,
        dtype=config.compute_dtype,
        load_in_4bit=config.load_in_4bit,
        bnb_4bit_quant_type=config.quant_type,
        use_bnb_nested_quant=config.double_quant,
        bnb_4bit_quant_storage=config.compute_dtype,
        use_peft=True,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_task_type="CAUSAL_LM",
    )
    # Set after __post_init__, which turns a one-name list into a string that peft would read as a regex.
    targets = config.target_modules
    args.lora_target_modules = "all-linear" if targets == ["all-linear"] else list(targets)
    return args


def load_model(base_model: str, config: TrainingConfig):
    """The base model, 4-bit NF4 with double quantization when load_in_4bit (QLoRA), on this rank's device."""
    kwargs: dict = {
        "dtype": getattr(torch, config.compute_dtype),
        "quantization_config": get_quantization_config(model_args(base_model, config)),
        "device_map": {"": ranks.local_rank()} if torch.cuda.is_available() else {"": "cpu"},
    }
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
    return get_peft_config(model_args("", config))


def attach_adapter(model, previous_adapter: Path | None, config: TrainingConfig):
    """(model, peft_config): a fresh LoRA config, or SFT → DPO: the SFT adapter, trained further."""
    if previous_adapter is None:
        return model, lora_config(config)
    # TRL keeps a frozen copy of it as the DPO reference.
    return PeftModel.from_pretrained(model, str(previous_adapter), is_trainable=True), None


def count_4bit_layers(model) -> tuple[int, int]:
    """(4-bit linear layers, all linear layers) in the base model."""
    import bitsandbytes as bnb

    four = sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    linear = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear | bnb.nn.Linear4bit))
    return four, linear


def keep_adapter_fp32(model) -> str:
    """Upcast the trained adapter's weights to fp32 (bf16 compute stays): the dtype they now have.

    TRL casts the LoRA weights of a 4-bit model to bf16, as the QLoRA paper's script did. bf16 keeps 8
    bits of mantissa: an Adam step of 5e-6 on a weight of 0.01 is below its resolution and rounds away,
    so in a low-lr DPO phase most lora_A elements would never move. The optimizer is built after this.
    """
    cast_adapter_dtype(model, adapter_name="default")
    if isinstance(model, PeftModel) and "ref" in model.peft_config:
        # SFT → DPO: TRL copied the SFT adapter into the frozen "ref" one before rounding "default" to bf16;
        # taking the exact values back keeps the policy equal to its reference at the first step.
        for name, param in model.named_parameters():
            if ".default." in name:
                param.data.copy_(model.get_parameter(name.replace(".default.", ".ref.")).data)
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    return ",".join(sorted(str(d).removeprefix("torch.") for d in dtypes))


# --- settings and the trainer --------------------------------------------------------------------


def choose_settings(model, config: TrainingConfig, *, phase: str) -> autoconfig.AutoChoice:
    """Micro-batch, checkpointing, kernels: decided once, on rank 0, for the GPU with the least free memory."""
    shape = autoconfig.ModelShape.from_config(model.config, num_params=None)
    free = ranks.smallest(free_gpu_bytes())
    return ranks.decide(
        lambda: autoconfig.choose(
            shape,
            method=phase,
            max_length=config.max_length,
            free_bytes=free,
            load_in_4bit=config.load_in_4bit,
            lora_r=config.lora_r,
            packing=config.packing,
            liger_available=liger_available(),
            varlen_attention=flash_attention_available(),
            batch_size=config.batch_size,
            gradient_checkpointing=config.gradient_checkpointing,
            liger_kernel=config.liger_kernel,
        )
    )


def trainer_args(config: TrainingConfig, *, phase: str, output_dir: Path, choice: autoconfig.AutoChoice) -> dict:
    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": choice.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "learning_rate": config.learning_rate if phase == "sft" else config.dpo_learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_ratio,  # below 1: a share of the steps, rounded up
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "optim": config.optimizer,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps > 0 else -1,
        "max_length": config.max_length,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": config.logging_steps,
        # A NaN must reach the callback that fails the job, not be replaced by the mean of earlier losses.
        "logging_nan_inf_filter": False,
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
        "ddp_find_unused_parameters": False if ranks.world_size() > 1 else None,
    }


def _warmup_from_first_step(step: int, *, warmup: int, after) -> float:
    return (step + 1) / (warmup + 1) if step < warmup else after(step)


class WarmupFromFirstStep:
    """Linear warmup whose first step already learns: step s of W runs at (s+1)/(W+1) of the peak rate.

    transformers' warmup runs step 0 at a learning rate of 0, which on a short run (W=1) wastes the
    first step outright. After the warmup the named schedule (cosine, linear, ...) is transformers' own.
    """

    resolved_warmup_steps = 0

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        created = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        self.resolved_warmup_steps = warmup
        if created and warmup > 0 and isinstance(scheduler, LambdaLR):
            scheduler.lr_lambdas = [
                partial(_warmup_from_first_step, warmup=warmup, after=after) for after in scheduler.lr_lambdas
            ]
            lrs = [
                base * fn(scheduler.last_epoch)
                for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
            ]
            for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            scheduler._last_lr = lrs
        return scheduler


class GoldsetSFTTrainer(WarmupFromFirstStep, SFTTrainer):
    pass


class GoldsetDPOTrainer(WarmupFromFirstStep, DPOTrainer):
    pass


def build_trainer(*, phase, model, tokenizer, config, rows, output_dir, choice, callback, peft_config):
    """TRL's SFT or DPO trainer for one phase, its adapter weights kept in fp32."""
    args = trainer_args(config, phase=phase, output_dir=output_dir, choice=choice)
    dataset = Dataset.from_list(rows)
    if phase == "sft":
        trainer = GoldsetSFTTrainer(
            model=model,
            args=SFTConfig(**args, packing=choice.padding_free, padding_free=choice.padding_free),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
    else:
        trainer = GoldsetDPOTrainer(
            model=model,
            ref_model=None,  # the reference is the same model with the adapter switched off (or its frozen copy)
            args=DPOConfig(**args, beta=config.dpo_beta),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
    trainer.adapter_dtype = keep_adapter_fp32(trainer.model)
    return trainer


def last_checkpoint(phase_dir: Path) -> Path | None:
    found = get_last_checkpoint(str(phase_dir)) if Path(phase_dir).is_dir() else None
    return Path(found) if found else None


def is_main_process() -> bool:
    return ranks.is_main()


# --- one phase -----------------------------------------------------------------------------------


@dataclass
class PhaseOutcome:
    metrics: dict
    cancelled: bool
    checkpoint: str  # the newest checkpoint of this phase, or ""


def phase_rows(tokenizer, records: list[dict], config: TrainingConfig, *, phase: str, sink: ProgressSink):
    """The phase's rows, every one within max_length with its answer whole; and how many gave way."""
    rows, fit = examples.training_rows(
        tokenizer, records, phase=phase, max_length=config.max_length, sft_on_chosen=config.sft_on_chosen
    )
    if fit.examples == 0:
        raise TrainingError(
            f"The snapshot has no {phase.upper()} examples: choose a method that matches its data "
            f"({'gold answers' if phase == 'sft' else 'preference pairs'} are needed for {phase.upper()})."
        )
    if fit.prompt_truncated or fit.left_out:
        sink.log(
            f"[{phase}] max_length {config.max_length}: {fit.prompt_truncated} prompt(s) cut from the left, "
            f"{fit.left_out} example(s) left out (their answer does not fit whole)"
        )
    if not rows:
        raise TrainingError(
            f"Every {phase.upper()} example is longer than max_length {config.max_length} even with its prompt cut: "
            f"raise max_length (the model allows more) or shorten the answers."
        )
    return rows, fit


def train(trainer, *, phase: str, resume_checkpoint: str | None, phase_dir: Path, fallback_checkpoint: str):
    """``trainer.train()``; a NaN or infinity fails the phase, naming the step and the last good checkpoint."""
    try:
        return trainer.train(resume_from_checkpoint=resume_checkpoint)
    except NonFiniteError as exc:
        found = last_checkpoint(phase_dir)
        good = str(found) if found else fallback_checkpoint
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before it"
        raise TrainingError(
            f"The {phase.upper()} {exc.what} became {exc.value} at step {exc.step} (learning rate "
            f"{exc.learning_rate:.3g}); training stopped before applying that step, and {where}. Retry with a "
            f"lower learning rate or max_grad_norm, or check the snapshot for broken examples."
            if exc.learning_rate is not None
            else f"The {phase.upper()} {exc.what} became {exc.value} at step {exc.step}; training stopped, and "
            f"{where}. Retry with a lower learning rate or max_grad_norm.",
            checkpoint=good,
        ) from exc


def save_adapter(trainer, tokenizer, adapter_dir: Path) -> None:
    """Adapter weights (without DPO's frozen reference copy) and tokenizer, written by rank 0 for all ranks."""

    def save() -> None:
        model = trainer.model
        if isinstance(model, PeftModel) and "ref" in model.peft_config:
            model.save_pretrained(str(adapter_dir), selected_adapters=["default"])
        else:
            model.save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))

    # The next phase loads it on every rank.
    ranks.main_first(save)


def phase_metrics(trainer, result, *, rows, fit, choice, base_layers: tuple[int, int]) -> dict:
    """What the manifest records of one trained phase."""
    four_bit, linear = base_layers
    args = trainer.args
    per_device = args.per_device_train_batch_size
    return {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "examples": len(rows),
        "fit": fit.as_dict(),
        "warmup_steps": trainer.resolved_warmup_steps,
        "adapter_dtype": trainer.adapter_dtype,
        "batch": {
            "per_device": per_device,
            "gradient_accumulation": args.gradient_accumulation_steps,
            "processes": ranks.world_size(),
            "global": per_device * args.gradient_accumulation_steps * ranks.world_size(),
        },
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
        # What every rank trained with: one config for all, or the gradients would be weighted wrongly.
        "ranks": ranks.gather(
            {
                "rank": ranks.rank(),
                "device": ranks.device_name(),
                "batch_size": per_device,
                "gradient_accumulation": args.gradient_accumulation_steps,
                "activation_checkpointing": choice.gradient_checkpointing,
                "steps": trainer.state.global_step,
            }
        ),
    }


def train_phase(
    *,
    phase: str,
    base_model: str,
    base: BaseModelRecord,
    tokenizer,
    config: TrainingConfig,
    records: list[dict],
    phase_dir: Path,
    previous_adapter: Path | None,
    resume_checkpoint: str | None,
    fallback_checkpoint: str,
    sink: ProgressSink,
) -> PhaseOutcome:
    """One phase, top to bottom: rows → load the model → build the trainer → train → save the adapter."""
    rows, fit = phase_rows(tokenizer, records, config, phase=phase, sink=sink)

    sink.idle()
    model = load_model(base_model, config)
    base.loaded(model)
    four_bit, linear = count_4bit_layers(model)
    sink.log(f"[{phase}] base model loaded: {four_bit} of {linear} linear layers in 4 bits")
    model, peft_config = attach_adapter(model, previous_adapter, config)
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

    result = train(
        trainer,
        phase=phase,
        resume_checkpoint=resume_checkpoint,
        phase_dir=phase_dir,
        fallback_checkpoint=fallback_checkpoint,
    )
    sink.log(f"[{phase}] warmup: {trainer.resolved_warmup_steps} step(s); adapter weights in {trainer.adapter_dtype}")
    found = last_checkpoint(phase_dir)
    metrics = phase_metrics(trainer, result, rows=rows, fit=fit, choice=choice, base_layers=(four_bit, linear))
    if callback.stopped_by_request:
        sink.log(f"[{phase}] cancelled at step {trainer.state.global_step}; checkpoint kept: {found}")
    else:
        save_adapter(trainer, tokenizer, phase_dir / "adapter")
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return PhaseOutcome(metrics=metrics, cancelled=callback.stopped_by_request, checkpoint=str(found or ""))


def reuse_finished_phase(resume_from: Path | None, phase: str, adapter_dir: Path) -> Path | None:
    """A resumed job takes the phases its predecessor finished as they are (copied once, by rank 0)."""
    if resume_from is None:
        return None
    done = Path(resume_from) / phase / "adapter"
    if not done.is_dir():
        return None
    ranks.main_first(lambda: shutil.copytree(done, adapter_dir, dirs_exist_ok=True))
    return done


# --- the job -------------------------------------------------------------------------------------


def build_manifest(
    *,
    provenance: dict | None,
    status: str,
    base: BaseModelRecord,
    config: TrainingConfig,
    phases: dict,
    records: int,
    checkpoint: str,
    started: float,
) -> dict:
    manifest = {
        **(provenance or {}),
        "status": status,
        "code_version": code_version(),
        "base_model": base.fingerprint if base.fingerprint is not None else base.take(),
        "method": config.method,
        "config": config.to_dict(),
        "library_versions": library_versions(),
        "hardware": hardware(),
        "metrics": phases,
        "records": records,
        "last_checkpoint": checkpoint,
        "started_at": started,
        "finished_at": time.time(),
    }
    return finite(manifest)


def finite(value):
    """The manifest with every NaN or infinity as None: JSON has no such numbers (PostgreSQL refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_manifest(manifest: dict, target: Path) -> None:
    if is_main_process():
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))


def publish_adapter(output_dir: Path, adapter_dir: Path) -> Path:
    """The last phase's adapter becomes the job's ``adapter/`` (what is downloaded and served)."""
    final_dir = output_dir / "adapter"
    if is_main_process():
        if final_dir.exists():
            shutil.rmtree(final_dir)
        shutil.copytree(adapter_dir, final_dir)
    return final_dir


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
    tokenizer = load_tokenizer(base_model)
    base = BaseModelRecord(base_model)
    phases: dict[str, dict] = {}
    previous_adapter: Path | None = None
    checkpoint = ""
    status = "succeeded"

    for phase in config.phases:
        phase_dir = output_dir / phase
        reused = reuse_finished_phase(resume_from, phase, phase_dir / "adapter")
        if reused is not None:
            sink.log(f"[{phase}] reusing the finished {phase.upper()} adapter of the resumed job")
            phases[phase] = {"reused_from": str(reused)}
            previous_adapter = phase_dir / "adapter"
            continue
        found = last_checkpoint(Path(resume_from) / phase) if resume_from is not None else None
        if found is not None:
            sink.log(f"[{phase}] resuming from {found.name}")
        outcome = train_phase(
            phase=phase,
            base_model=base_model,
            base=base,
            tokenizer=tokenizer,
            config=config,
            records=records,
            phase_dir=phase_dir,
            previous_adapter=previous_adapter,
            resume_checkpoint=str(found) if found else None,
            fallback_checkpoint=checkpoint,
            sink=sink,
        )
        phases[phase] = outcome.metrics
        checkpoint = outcome.checkpoint or checkpoint
        if outcome.cancelled:
            status = "cancelled"
            break
        previous_adapter = phase_dir / "adapter"

    sink.idle()
    final_dir = publish_adapter(output_dir, previous_adapter) if status == "succeeded" else None
    manifest = build_manifest(
        provenance=provenance,
        status=status,
        base=base,
        config=config,
        phases=phases,
        records=len(records),
        checkpoint=checkpoint,
        started=started,
    )
    write_manifest(manifest, final_dir or output_dir)
    return RunResult(
        status=status, adapter_dir=final_dir, manifest=manifest, metrics=phases, last_checkpoint=checkpoint
    )
