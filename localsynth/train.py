"""Fine-tune a Hugging Face encoder for classification, driven by accelerate.

One code path for one CPU process, `torchrun` on CPU (gloo) and `accelerate launch` on one or
many GPUs and nodes. `training.batch_size` is the global batch per optimizer step: batches are
split across processes, so the run sees the same batches and schedule whatever the process
count. Texts are tokenised once, batched by similar length and padded per batch.

Checkpoints (model, optimizer, scheduler and RNG states through `accelerator.save_state`) are
written each epoch and every `checkpoint_every_steps`; a rerun after a kill resumes from the
newest complete one and skips the batches it had already trained on.

    out_dir/config.yaml, environment.json     written before any work
    out_dir/checkpoints/step-N/               accelerate state + trainer_state.json (written last)
    out_dir/model/                            the result, loadable by transformers.pipeline
    out_dir/training.json                     hyperparameters, data sources, labels, speed, loss
    out_dir/train.done                        completion marker, written last
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from localsynth.errors import UserError, require
from localsynth.io import write_json_atomic, write_text_atomic
from localsynth.progress import StepProgress, log
from localsynth.runinfo import environment
from localsynth.trainconfig import TrainConfig
from localsynth.traindata import load_training_rows


class LengthGroupedBatches:
    """Index batches for one epoch: shuffled, then sorted by length within windows of 50
    batches so each batch pads little, then the batch order shuffled again. Seeded by
    (seed, epoch), so a resumed run replays the same order."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if self.group:
            window = self.batch_size * 50
            order = [
                i
                for start in range(0, len(order), window)
                for i in sorted(order[start : start + window], key=lambda i: -self.lengths[i])
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        yield from batches


def make_collate(pad_id: int):
    import torch

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(item["input_ids"]) for item in items)
        batch = {"input_ids": [], "attention_mask": []}
        has_types = "token_type_ids" in items[0]
        if has_types:
            batch["token_type_ids"] = []
        for item in items:
            pad = width - len(item["input_ids"])
            batch["input_ids"].append(item["input_ids"] + [pad_id] * pad)
            batch["attention_mask"].append([1] * len(item["input_ids"]) + [0] * pad)
            if has_types:
                batch["token_type_ids"].append(item["token_type_ids"] + [0] * pad)
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        out["labels"] = torch.tensor([item["label"] for item in items], dtype=torch.long)
        return out

    return collate


def check_model_dir(path: str) -> Path:
    model_dir = Path(os.path.expanduser(path))
    if not model_dir.is_dir():
        raise UserError(f"model: no such folder: {path}; point it at a local Hugging Face encoder folder (with config.json)")
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


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = [p for p in (out_dir / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def precision_for(setting: str, torch) -> str:
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise UserError("training.precision is fp16 but no CUDA GPU is visible; use fp32 or bf16 on a CPU")
    return {"fp32": "no"}.get(setting, setting)


def build_model(cfg: TrainConfig, model_dir: Path, labels: list[str]):
    transformers = require("transformers", "dev")
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
        peft = require("peft", "dev")
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


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    keep = [k for k in ("input_ids", "token_type_ids") if k in enc]
    return {k: enc[k] for k in keep}


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) into cfg.out_dir; returns the training record."""
    torch = require("torch", "dev")
    accelerate = require("accelerate", "dev")
    transformers = require("transformers", "dev")
    out_dir = Path(cfg.out_dir)
    if (out_dir / "train.done").is_file():
        log(f"{out_dir} already holds a finished training run; nothing to do")
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
    dataset = [
        {**{k: v[i] for k, v in encoded.items()}, "label": targets[i]} for i in range(rows.height)
    ]
    sampler = LengthGroupedBatches([len(x) for x in encoded["input_ids"]], micro, hp.seed, hp.group_by_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=make_collate(pad_id))

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
    finished = False
    try:
        model.train()
        epoch = state["epoch"]
        while state["global_step"] < total_steps:
            sampler.set_epoch(epoch)
            batches = loader
            if state["batches_in_epoch"]:
                batches = accelerator.skip_first_batches(loader, state["batches_in_epoch"])
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                state["batches_in_epoch"] += 1
                samples += batch["labels"].shape[0] * world
                losses.append(accelerator.gather(loss.detach()).mean().item())
                if accelerator.sync_gradients:
                    state["global_step"] += 1
                    progress.update(state["global_step"], batch["labels"].shape[0] * world * hp.gradient_accumulation_steps, losses[-1])
                    every = hp.checkpoint_every_steps
                    if every and state["global_step"] % every == 0 and state["global_step"] < total_steps:
                        save_checkpoint(accelerator, out_dir, state, hp.keep_checkpoints)
                    if state["global_step"] >= total_steps:
                        break
            else:
                epoch += 1
                state.update(epoch=epoch, batches_in_epoch=0)
                save_checkpoint(accelerator, out_dir, state, hp.keep_checkpoints)
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
    accelerator.wait_for_everyone()
    return record


def save_checkpoint(accelerator, out_dir: Path, state: dict[str, Any], keep: int) -> None:
    """accelerate state into a temporary folder, renamed when complete; old ones pruned."""
    final = out_dir / "checkpoints" / f"step-{state['global_step']}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "trainer_state.json", state)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        done = sorted(
            (p for p in final.parent.glob("step-*") if p.suffix != ".tmp"), key=lambda p: int(p.name.split("-")[1])
        )
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
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
