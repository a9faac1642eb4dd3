"""transformers backend: batched generation on CPU or GPU, for small machines and smoke runs.

Batches are formed from the requests sorted by prompt length (less padding), and each batch is
seeded from its members' seeds. A batch's arithmetic then depends only on its members, so a
shard resumed after a crash re-forms the same batches and, on CPU, produces the same text.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from localsynth.backends.base import ChatRequest, Completion, InProcessBackend, Results, hub_error
from localsynth.backends.models import resolve_model
from localsynth.backends.settings import GeneratorConfig, Sampling
from localsynth.devices import resolve_device
from localsynth.errors import UserError, require


class HFBackend(InProcessBackend):
    name = "hf"

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg, cfg.hf)
        self.model = None

    def load(self) -> None:
        torch = require("torch")
        transformers = require("transformers")
        transformers.utils.logging.disable_progress_bar()  # our own progress is the one to read
        device = resolve_device(
            self.settings.device, torch, f"generator.hf.device is '{self.settings.device}'", "set generator.hf.device=cpu"
        )
        path = resolve_model(self.cfg.model)
        dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            self.settings.dtype
        ]
        if dtype == "auto" and device == "cpu":
            dtype = torch.float32  # half precision on CPU is slow and changes results
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        except OSError as exc:
            if path == self.cfg.model:
                raise hub_error(path) from exc
            raise UserError(f"generator.model: cannot load a causal LM from {path}: {exc}") from exc
        if self.tokenizer.chat_template is None:
            raise UserError(f"generator.model: the tokenizer in {path} has no chat template; use a chat/instruct model")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device
        self.gpus = 1 if device.startswith("cuda") else 0

    def generate(self, requests: Sequence[ChatRequest], sampling: Sampling) -> Results:
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            for r in requests
        ]
        lengths = [len(p) for p in prompts]
        order = sorted(range(len(requests)), key=lambda i: (lengths[i], requests[i].id))
        size = self.settings.batch_size
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            seed = zlib.crc32(",".join(str(requests[i].seed) for i in batch).encode())
            torch.manual_seed(seed)
            enc = self.tokenizer(
                [prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            sample = sampling.temperature > 0
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    do_sample=sample,
                    temperature=sampling.temperature if sample else None,
                    top_p=sampling.top_p if sample else None,
                    max_new_tokens=sampling.max_tokens,
                    repetition_penalty=sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    stop_strings=sampling.stop or None,
                    tokenizer=self.tokenizer if sampling.stop else None,
                )
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            results = []
            for row, pos in enumerate(batch):
                tokens = new[row]
                stopped = eos in tokens
                if stopped:
                    tokens = tokens[: tokens.index(eos)]
                else:
                    tokens = [t for t in tokens if t != self.tokenizer.pad_token_id]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                finish = "stop" if stopped or len(tokens) < sampling.max_tokens else "length"
                results.append((pos, Completion(text, finish, int(prompt_lens[row]), len(tokens))))
            yield results

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
