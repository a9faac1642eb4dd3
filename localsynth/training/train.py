"""Fine-tune a Hugging Face encoder for classification, driven by accelerate.

One code path for one CPU process, `torchrun` on CPU (gloo) and `accelerate launch` on one or
many GPUs and nodes. `training.batch_size` is the global batch per optimizer step: batches are
split across processes, so the run sees the same batches, rows and schedule whatever the process
count. Texts are tokenised once, batched by similar length and padded per batch.

Checkpoints (model, optimizer, scheduler and RNG states through `accelerator.save_state`) are
written each epoch and every `checkpoint_every_steps`; a rerun after a kill resumes from the
newest one, skips the batches it had already trained on and replays the same batch order. A
checkpoint is written under another name and renamed once complete and synced, so any
`step-N` folder is a complete one; only the newest is kept, and all go once the run is done.

    out_dir/config.yaml, environment.json     written before any work
    out_dir/checkpoints/step-N/               accelerate state + trainer_state.json
    out_dir/model/                            the result, loadable by transformers.pipeline
    out_dir/training.json                     hyperparameters, data sources, labels, speed, loss
    out_dir/train.done                        completion marker; checkpoints/ is removed after it
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from localsynth.errors import UserError, require
from localsynth.io import fsync_tree, write_json_atomic, write_text_atomic
from localsynth.progress import StepProgress, log
from localsynth.runinfo import environment
from localsynth.training.config import TrainConfig, resolve_model_path
from localsynth.training.rows import (
    IGNORE,
    LengthGroupedBatches,
    Rows,
    load_training_rows,
    make_collate,
    tokenize,
)

CHECKPOINT = re.compile(r"^step-(\d+)$")
PARTIAL = "partial-"  # prefix of a checkpoint being written: never matches step-*
# Test hooks. TRACE: a folder where each process appends, per batch it trains, the row ids
# (rank-R.jsonl). KILL_AT: SIGKILL this process at a named point ("committing:STEP",
# "saved:STEP", "done"), to test what a kill there leaves.
TRACE, KILL_AT = "LOCALSYNTH_TRAIN_TRACE", "LOCALSYNTH_TRAIN_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def check_model_dir(path: str) -> Path:
    model_dir = Path(resolve_model_path(path))
    if not model_dir.is_dir():
        raise UserError(
            f"model: no such folder: {path}; point it at a local Hugging Face encoder folder (with config.json) "
            f"or name the packaged all-MiniLM-L6-v2"
        )
    if not (model_dir / "config.json").is_file():
        raise UserError(f"model: {path} has no config.json; point it at a Hugging Face model folder")
    return model_dir


def check_head(config, labels: list[str], model: str) -> None:
    """A folder that already holds a classifier must have the same labels, or its head would
    be silently reinterpreted."""
    is_classifier = any("ForSequenceClassification" in a for a in (config.architectures or []))
    if not is_classifier:
        return
    names = [config.id2label[i] for i in sorted(config.id2label)]
    default = [f"LABEL_{i}" for i in range(len(names))]
    if len(names) != len(labels) or (names != default and names != labels):
        raise UserError(
            f"model: {model} is a classifier with {len(names)} labels ({', '.join(names)}) but this run has "
            f"{len(labels)} ({', '.join(labels)}); start from the base encoder or use the same label set"
        )


def checkpoints(out_dir: Path) -> list[Path]:
    """The complete checkpoints, oldest first."""
    found = [(int(m[1]), p) for p in (out_dir / "checkpoints").glob("step-*") if (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found) if (p / "trainer_state.json").is_file()]


def latest_checkpoint(out_dir: Path) -> Path | None:
    return (checkpoints(out_dir) or [None])[-1]


def precision_for(setting: str, torch) -> str:
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise UserError("training.precision is fp16 but no CUDA GPU is visible; use fp32 or bf16 on a CPU")
    return {"fp32": "no"}.get(setting, setting)


def build_model(cfg: TrainConfig, model_dir: Path, labels: list[str]):
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"model: cannot load a config and tokenizer from {model_dir}: {str(exc).splitlines()[0]}") from None
    check_head(config, labels, cfg.model)
    id2label = dict(enumerate(labels))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    if cfg.lora.enabled:
        peft = require("peft")
        lora = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
        )
        try:
            model = peft.get_peft_model(model, lora)
        except ValueError as exc:
            raise UserError(f"lora: {exc}; set lora.target_modules to the attention module names of this model") from None
    return model, tokenizer


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) into cfg.out_dir; returns the training record."""
    torch = require("torch")
    accelerate = require("accelerate")
    transformers = require("transformers")
    out_dir = Path(cfg.out_dir)
    if (out_dir / "train.done").is_file():
        log(f"{out_dir} already holds a finished training run; nothing to do")
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # a kill may have come between done and cleanup
        return json.loads((out_dir / "training.json").read_text(encoding="utf-8"))

    model_dir = check_model_dir(cfg.model)
    hp = cfg.training
    mixed = precision_for(hp.precision, torch)
    rows, labels, sources = load_training_rows(cfg, cfg.label_set())
    accelerator = accelerate.Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        dataloader_config=accelerate.DataLoaderConfiguration(split_batches=True),
    )
    world = accelerator.num_processes
    micro = hp.batch_size // hp.gradient_accumulation_steps
    if hp.batch_size % hp.gradient_accumulation_steps or micro % world:
        raise UserError(
            f"training.batch_size {hp.batch_size} must split evenly into {hp.gradient_accumulation_steps} "
            f"accumulation steps x {world} processes; pick a multiple of {hp.gradient_accumulation_steps * world}"
        )
    accelerate.utils.set_seed(hp.seed)

    resume = latest_checkpoint(out_dir)
    if accelerator.is_main_process:
        config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        saved = out_dir / "config.yaml"
        if resume and saved.is_file() and yaml.safe_load(saved.read_text()) != cfg.model_dump(mode="json"):
            raise UserError(f"{out_dir} holds checkpoints of a different training config; use a new out_dir or restore it")
        write_text_atomic(saved, config_text)
        write_json_atomic(out_dir / "environment.json", {**environment(), "world_size": world})

    model, tokenizer = build_model(cfg, model_dir, labels)
    label_ids = {label: i for i, label in enumerate(labels)}
    encoded = tokenize(tokenizer, rows["text"].to_list(), hp.max_length)
    targets = [label_ids[label] for label in rows["label"].to_list()]
    lengths = [len(x) for x in encoded["input_ids"]]
    sampler = LengthGroupedBatches(lengths, micro, hp.seed, hp.group_by_length, pad_short=world > 1)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loader = torch.utils.data.DataLoader(Rows(encoded, targets), batch_sampler=sampler, collate_fn=make_collate(pad_id))

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [p for p in model.named_parameters() if p[1].requires_grad]
    groups = [
        {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": hp.weight_decay},
        {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    try:  # the fused kernel: on a 2-core CPU the per-tensor loop took 2.5 s a step for MiniLM
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, foreach=True)
    steps_per_epoch = math.ceil(len(sampler) / hp.gradient_accumulation_steps)
    total_steps = hp.max_steps or math.ceil(steps_per_epoch * hp.epochs)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(total_steps * hp.warmup_ratio), total_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "labels": labels}
    if resume is not None:
        saved_state = json.loads((resume / "trainer_state.json").read_text(encoding="utf-8"))
        if saved_state.get("labels") != labels:
            raise UserError(
                f"checkpoint {resume} was trained with labels {saved_state.get('labels')} but this run has "
                f"{labels}; use a new out_dir"
            )
        accelerator.load_state(str(resume))
        state.update(saved_state)
        if accelerator.is_main_process:
            log(f"resuming from {resume} (step {state['global_step']} of {total_steps})")

    progress = StepProgress(
        total_steps, f"train {model_dir.name}", cfg.progress, cfg.log_every_s, enabled=accelerator.is_main_process
    )
    progress.step = state["global_step"]
    losses: list[float] = []
    start = time.monotonic()
    samples = 0
    trace = Path(os.environ[TRACE]) / f"rank-{accelerator.process_index}.jsonl" if os.environ.get(TRACE) else None
    finished = False
    try:
        model.train()
        epoch = state["epoch"]
        while state["global_step"] < total_steps:
            # The prepared loader re-seeds the batch sampler from its own pass counter on every
            # pass (accelerate >= 1.2), a counter that starts at 0 in a fresh process: set it, or
            # a resumed run replays the orders of epochs 0, 1, ... With several processes the
            # sampler sits behind BatchSamplerShard, which passes nothing on: set it too.
            loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            batches = loader
            if state["batches_in_epoch"]:
                batches = accelerator.skip_first_batches(loader, state["batches_in_epoch"])
            for batch in batches:
                labels_, ids = batch.pop("labels"), batch.pop("ids")
                with accelerator.accumulate(model):
                    # The mean over the global batch's real rows, whatever their split across
                    # processes (padding rows and uneven shares included): DDP averages the
                    # processes' gradients, hence the factor `world`.
                    logits = model(**batch).logits
                    real = accelerator.reduce((labels_ != IGNORE).sum(), "sum")
                    loss = torch.nn.functional.cross_entropy(
                        logits.float(), labels_, ignore_index=IGNORE, reduction="sum"
                    ) * world / real
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state["batches_in_epoch"] += 1
                samples += int(real)
                losses.append(accelerator.gather(loss.detach()).mean().item())
                if accelerator.sync_gradients:
                    state["global_step"] += 1
                    progress.update(state["global_step"], int(real) * hp.gradient_accumulation_steps, losses[-1])
                if trace:
                    write_trace(trace, state, epoch, ids[labels_ != IGNORE].tolist())
                if accelerator.sync_gradients:
                    every = hp.checkpoint_every_steps
                    last = state["batches_in_epoch"] == len(sampler)  # then the epoch's own checkpoint follows
                    if every and state["global_step"] % every == 0 and state["global_step"] < total_steps and not last:
                        save_checkpoint(accelerator, out_dir, state)
                    if state["global_step"] >= total_steps:
                        break
            else:
                epoch += 1
                state.update(epoch=epoch, batches_in_epoch=0)
                save_checkpoint(accelerator, out_dir, state)
                continue
            break
        finished = True
    finally:
        progress.close(final_line=finished)

    seconds = time.monotonic() - start
    record = {
        "model": str(model_dir),
        "labels": labels,
        "hyperparameters": {**hp.model_dump(), "precision_used": mixed},
        "lora": cfg.lora.model_dump(),
        "data_sources": sources,
        "train_rows": rows.height,
        "label_counts": dict(rows.group_by("label").len().sort("label").iter_rows()),
        "world_size": world,
        "gpus": world if accelerator.device.type == "cuda" else 0,
        "steps": state["global_step"],
        "rows_trained": samples,  # by this invocation (since the resumed step), counting each epoch
        "final_loss": sum(losses[-20:]) / max(len(losses[-20:]), 1),
        "seconds": round(seconds, 2),
        "samples_per_s": round(samples / seconds, 2) if seconds > 0 else None,
        "resumed_from": str(resume) if resume else None,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), tokenizer, out_dir / "model", cfg.lora.enabled)
        write_json_atomic(out_dir / "training.json", record)
        write_json_atomic(out_dir / "train.done", {"steps": state["global_step"]})
        kill_point("done")
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # only resume needed them (521 MB for MiniLM)
    accelerator.wait_for_everyone()
    return record


def write_trace(path: Path, state: dict[str, Any], epoch: int, ids: list[int]) -> None:
    """One line per batch trained (the TRACE test hook), flushed: a kill loses none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"epoch": epoch, "batch": state["batches_in_epoch"] - 1, "step": state["global_step"], "ids": ids}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def save_checkpoint(accelerator, out_dir: Path, state: dict[str, Any]) -> None:
    """The accelerate state into `partial-step-N`, synced to disk and renamed `step-N` once
    complete; then the older checkpoints are removed, so there is always a complete one (the
    newest) and, between the rename and the removal, briefly two."""
    root = out_dir / "checkpoints"
    final = root / f"step-{state['global_step']}"
    tmp = root / f"{PARTIAL}{final.name}"
    if accelerator.is_main_process:
        for stale in root.glob(f"{PARTIAL}*"):  # left by a kill while writing
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "trainer_state.json", state)
        fsync_tree(tmp)  # a node crash after the rename must not leave a named but empty checkpoint
        kill_point(f"committing:{state['global_step']}")
        if final.exists():  # a leftover of this step (a run never saves one step twice)
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_tree(root, files=False)
        for old in checkpoints(out_dir)[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        kill_point(f"saved:{state['global_step']}")
    accelerator.wait_for_everyone()


def save_model(model, tokenizer, target: Path, merge_lora: bool) -> None:
    """Hugging Face format (model, tokenizer, label names), written beside and renamed: a
    reader never sees half a model. LoRA adapters are merged so `pipeline()` loads it as is."""
    if merge_lora:
        model = model.merge_and_unload()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
