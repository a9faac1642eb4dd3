"""vLLM offline engine: the bulk-throughput path, and the only module that imports vllm.

All requests of a round go to the engine in one call so continuous batching stays fed;
prefix caching is on because every request of a task shares the system prompt (and every turn
of a conversation shares its history); identical prompts become one request with n > 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from localsynth.backends.base import (
    ChatRequest,
    Completion,
    Results,
    group_identical,
    local_model_dir,
)
from localsynth.config import GeneratorConfig, Sampling
from localsynth.errors import UserError, require


class VllmBackend:
    name = "vllm"

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        self.settings = cfg.vllm
        self.model_name = cfg.model or ""
        self.llm = None

    def load(self) -> None:
        path = local_model_dir(self.cfg.model)
        vllm = require("vllm", "vllm")
        check_devices(self.settings.tensor_parallel_size)
        s = self.settings
        kwargs = dict(
            model=path,
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            dtype=s.dtype,
            enforce_eager=s.enforce_eager,
            enable_prefix_caching=s.enable_prefix_caching,
        )
        if s.max_model_len:
            kwargs["max_model_len"] = s.max_model_len
        if s.max_num_seqs:
            kwargs["max_num_seqs"] = s.max_num_seqs
        kwargs.update(s.engine_args)
        try:
            self.llm = vllm.LLM(**kwargs)
        except (OSError, ValueError) as exc:
            raise UserError(f"vLLM could not start with generator.model={self.cfg.model}: {exc}") from exc
        self._SamplingParams = vllm.SamplingParams

    def _params(self, sampling: Sampling, seed: int, n: int):
        return self._SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=sampling.stop or None,
            seed=seed,
        )

    def generate(self, requests: Sequence[ChatRequest], sampling: Sampling) -> Results:
        groups = group_identical(requests) if self.settings.use_n else [[i] for i in range(len(requests))]
        chunk = self.settings.submit_chunk or len(groups)
        for start in range(0, len(groups), chunk):
            part = groups[start : start + chunk]
            conversations = [requests[g[0]].messages for g in part]
            params = [self._params(sampling, requests[g[0]].seed, len(g)) for g in part]
            outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
            results = []
            for group, out in zip(part, outputs, strict=True):
                prompt_tokens = len(out.prompt_token_ids or ())
                for pos, choice in zip(group, out.outputs, strict=True):
                    results.append(
                        (pos, Completion(choice.text, choice.finish_reason, prompt_tokens, len(choice.token_ids)))
                    )
            yield results

    def close(self) -> None:
        if self.llm is not None:
            engine = getattr(self.llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None


def check_devices(tensor_parallel_size: int) -> None:
    """Refuse a GPU setting that this machine cannot honour, before the engine starts."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        if tensor_parallel_size > 1:
            raise UserError(
                f"generator.vllm.tensor_parallel_size is {tensor_parallel_size} but this vLLM build runs on "
                f"the CPU (no GPU found); set generator.vllm.tensor_parallel_size=1"
            )
        return
    import torch

    count = torch.cuda.device_count()
    if tensor_parallel_size > count:
        raise UserError(
            f"generator.vllm.tensor_parallel_size is {tensor_parallel_size} but {count} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES); lower it or request more GPUs"
        )
