"""The Django-free runner on its own: QLoRA on a real 4-bit NF4 base on the CPU, with in-memory sinks."""

import json
from pathlib import Path

import pytest

from training.callbacks import MemorySink
from training.config import TrainingConfig

pytestmark = pytest.mark.training

# Resumed and uninterrupted runs give the same losses to this tolerance (they are bit-identical on the CPU).
RESUME_TOLERANCE = 1e-6


def sft_records(n: int = 8) -> list[dict]:
    return [
        {
            "kind": "sft",
            "messages": [{"role": "user", "content": f"How do I reset my password, case {i}?"}],
            "completion": f"Open settings, choose security, reset password {i}.",
            "chosen": "",
            "rejected": "",
            "source_item_id": i,
        }
        for i in range(n)
    ]


def config(**changes) -> TrainingConfig:
    base = {"max_steps": 6, "logging_steps": 1, "save_steps": 1000, "batch_size": 2, "max_length": 128}
    return TrainingConfig(**{**base, "learning_rate": 1e-3, **changes})


def train(tiny_model, out: Path, cfg: TrainingConfig, *, sink=None, resume_from=None):
    from training import runner

    sink = sink or MemorySink()
    result = runner.run(
        base_model=tiny_model, config=cfg, records=sft_records(), output_dir=out, sink=sink, resume_from=resume_from
    )
    return result, sink


def test_a_resumed_qlora_run_matches_the_uninterrupted_one_and_keeps_its_dtype(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    whole, whole_sink = train(tiny_model, tmp_path / "whole", config())
    stopped, _ = train(tiny_model, tmp_path / "stopped", config(), sink=MemorySink(stop_after_step=3))
    assert stopped.status == "cancelled" and Path(stopped.last_checkpoint).name == "checkpoint-3"
    resumed, resumed_sink = train(tiny_model, tmp_path / "resumed", config(), resume_from=tmp_path / "stopped")

    uninterrupted = {r["step"]: r["loss"] for r in whole_sink.rows}
    after_resume = {r["step"]: r["loss"] for r in resumed_sink.rows}
    assert sorted(after_resume) == [4, 5, 6]
    for step, loss in after_resume.items():
        assert abs(loss - uninterrupted[step]) <= RESUME_TOLERANCE, (step, loss, uninterrupted[step])
    a = load_file(str(whole.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in a.values()} == {t.dtype for t in b.values()} == {torch.float32}
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= RESUME_TOLERANCE
    assert resumed.manifest["metrics"]["sft"]["adapter_dtype"] == "float32"


def test_a_short_run_warms_up_for_at_least_one_step_and_its_first_step_already_learns(tiny_model, tmp_path):
    result, sink = train(tiny_model, tmp_path / "run", config(max_steps=4, warmup_ratio=0.03))
    rates = [r["learning_rate"] for r in sink.rows]
    # 3% of 4 steps rounds up to 1 warmup step; that step runs at half the peak, not at 0.
    assert result.manifest["metrics"]["sft"]["warmup_steps"] == 1
    assert rates[0] == pytest.approx(5e-4) and rates[1] == pytest.approx(1e-3)
    assert all(rate > 0 for rate in rates)
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    assert manifest["metrics"]["sft"]["warmup_steps"] == 1
    no_warmup, sink = train(tiny_model, tmp_path / "none", config(max_steps=2, warmup_ratio=0.0))
    assert no_warmup.manifest["metrics"]["sft"]["warmup_steps"] == 0 and sink.rows[0]["learning_rate"] == 1e-3


def _long_records() -> list[dict]:
    system = {"role": "system", "content": "Be brief."}
    history = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "Noted."}]
    last = {"role": "user", "content": "How do I reset my password?"}
    return [
        {
            "kind": "dpo",
            "messages": [system, *history, last],
            "completion": "",
            "chosen": "Open settings, choose security, then reset password.",
            "rejected": "No.",
            "source_item_id": 1,
        },
        {
            "kind": "dpo",
            "messages": [{"role": "user", "content": "order " * 60 + "Where is my order?"}],
            "completion": "",
            "chosen": "Track it from the orders page.",
            "rejected": "Wait.",
            "source_item_id": 2,
        },
        {
            "kind": "dpo",
            "messages": [{"role": "user", "content": "Refund?"}],
            "completion": "",
            "chosen": "thirty days " * 40,
            "rejected": "No.",
            "source_item_id": 3,
        },
    ]


@pytest.mark.parametrize("phase", ["sft", "dpo"])
def test_the_trainer_sees_every_answer_whole_with_the_prompt_cut_from_the_left(tiny_model, tmp_path, phase):
    from training import autoconfig, runner
    from training.callbacks import ProgressCallback

    max_length = 48
    cfg = config(method=phase, max_length=max_length, packing=False)
    tokenizer = runner.load_tokenizer(tiny_model)
    rows, fit = runner.phase_rows(tokenizer, _long_records(), cfg, phase=phase, sink=MemorySink())
    # The answer that alone exceeds max_length is left out; the two long prompts are cut from the left.
    assert (fit.examples, fit.kept, fit.prompt_truncated, fit.left_out) == (3, 0, 2, 1)
    assert fit.left_out_items == [3]
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Be brief."}  # the system turn stays
    assert rows[0]["prompt"][-1]["content"] == "How do I reset my password?"

    model = runner.load_model(tiny_model, cfg)
    choice = autoconfig.AutoChoice(2, False, False, False, 0, [])
    trainer = runner.build_trainer(
        phase=phase,
        model=model,
        tokenizer=tokenizer,
        config=cfg,
        rows=rows,
        output_dir=tmp_path,
        choice=choice,
        callback=ProgressCallback(MemorySink(), phase=phase),
        peft_config=runner.lora_config(cfg),
    )
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    answers = [rows[0].get("completion", rows[0].get("chosen"))[0]["content"], "Track it from the orders page."]
    dataset = trainer.train_dataset
    assert len(dataset) == 2
    for example, answer in zip(dataset, answers, strict=True):
        if phase == "sft":
            ids, labels = example["input_ids"], example["labels"]
            learnt = [t for t, label in zip(ids, labels, strict=True) if label != -100]
            assert len(ids) <= max_length
        else:
            ids, learnt = example["prompt_ids"] + example["chosen_ids"], example["chosen_ids"]
            assert len(ids) <= max_length and len(example["prompt_ids"] + example["rejected_ids"]) <= max_length
        # The whole answer and its end-of-turn token carry loss: the model learns to stop.
        assert tokenizer.decode(learnt) == answer + "<|end|>" and learnt[-1] == end


def test_tokens_per_second_and_step_times_leave_checkpoint_saving_out(monkeypatch):
    from types import SimpleNamespace

    from transformers import TrainerControl

    from training import callbacks

    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    sink = MemorySink()
    callback = callbacks.ProgressCallback(sink, phase="sft")
    state = SimpleNamespace(global_step=0, max_steps=3, epoch=0.0, num_input_tokens_seen=0)
    args, control = SimpleNamespace(output_dir="/out"), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step, (at, tokens) in enumerate([(1.0, 100), (2.0, 200)], start=1):
        clock[0], state.global_step, state.num_input_tokens_seen = at, step, tokens
        callback.on_step_end(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 2.0, "learning_rate": 1e-3})
    clock[0] = 12.0  # a 10 s checkpoint save after step 2
    callback.on_save(args, state, control)
    clock[0], state.global_step, state.num_input_tokens_seen = 13.0, 3, 300
    callback.on_step_end(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 1.9, "learning_rate": 1e-3})
    assert [row["tokens_per_second"] for row in sink.rows] == [100.0, 100.0]  # not 100 / 11 s
    assert [seconds for _, _, seconds in sink.steps] == [None, 1.0, 1.0, 1.0]
    assert sink.checkpoints == ["/out/checkpoint-2"]


def test_a_base_model_changed_between_phases_fails_the_job_instead_of_being_recorded(tiny_model, tmp_path):
    import shutil

    from training import runner
    from training.errors import TrainingError

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)

    class EditsTheBase(MemorySink):
        def log(self, line: str) -> None:
            super().log(line)
            if line.startswith("[sft] warmup"):  # the SFT phase is done; someone edits the base model
                with (base / "config.json").open("a") as fh:
                    fh.write("\n")

    records = [*sft_records(4), {**sft_records(1)[0], "kind": "dpo", "chosen": "Yes.", "rejected": "No."}]
    with pytest.raises(TrainingError, match="changed while the job ran"):
        runner.run(
            base_model=str(base),
            config=config(method="sft_dpo", max_steps=1),
            records=records,
            output_dir=tmp_path / "out",
            sink=EditsTheBase(),
        )
