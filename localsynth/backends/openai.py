"""Any OpenAI-compatible chat endpoint: GPT-3.5-Turbo, a `vllm serve` server, others.

Requests run concurrently on an asyncio loop in a helper thread, bounded by a semaphore (the
number of HTTP requests in flight never exceeds `max_concurrency`, retries included) and by
optional requests- and tokens-per-minute limiters. Retries with exponential backoff that honour
Retry-After on 429 / 5xx / timeouts are the official client's own. The API key is read from the
environment variable named in the config and goes nowhere else.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Sequence

from localsynth.backends.base import ChatRequest, Completion, Results, group_identical
from localsynth.config import GeneratorConfig, Sampling
from localsynth.errors import UserError, require

_DONE = object()


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        self.settings = cfg.openai
        self.model_name = cfg.model or ""

    def _api_key(self) -> str:
        key = os.environ.get(self.settings.api_key_env)
        if key:
            return key
        if self.settings.base_url is None:
            raise UserError(
                f"no API key: the environment variable {self.settings.api_key_env} is not set; export it "
                f"(or name another variable with generator.openai.api_key_env)"
            )
        return "EMPTY"  # local OpenAI-compatible servers usually need none

    def load(self) -> None:
        openai = require("openai", "dev")
        s = self.settings
        where = s.base_url or "the OpenAI API"
        client = openai.OpenAI(base_url=s.base_url, api_key=self._api_key(), max_retries=1, timeout=10.0)
        try:
            served = [m.id for m in client.models.list()]
        except openai.AuthenticationError:
            raise UserError(f"{where} rejected the API key in ${s.api_key_env}; check that variable") from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise UserError(
                f"cannot reach an OpenAI-compatible server at {where}; start the server or fix "
                f"generator.openai.base_url"
            ) from None
        except openai.APIStatusError as exc:
            raise UserError(f"{where} answered {exc.status_code} to GET /models; check generator.openai.base_url") from None
        finally:
            client.close()
        if served and self.cfg.model not in served:
            raise UserError(
                f"generator.model '{self.cfg.model}' is not served by {where}; it serves: {', '.join(served[:20])}"
            )

    def generate(self, requests: Sequence[ChatRequest], sampling: Sampling) -> Results:
        results: queue.Queue = queue.Queue()
        groups = group_identical(requests) if self.settings.use_n else [[i] for i in range(len(requests))]

        def run() -> None:
            try:
                asyncio.run(self._run_all(requests, groups, sampling, results))
            except BaseException as exc:  # surfaced in the calling thread
                results.put(exc)
            results.put(_DONE)

        thread = threading.Thread(target=run, name="localsynth-openai", daemon=True)
        thread.start()
        finished = False
        while not finished:
            batch = [results.get()]
            while True:  # take everything that has arrived: fewer, larger chunks
                try:
                    batch.append(results.get_nowait())
                except queue.Empty:
                    break
            chunk = []
            for item in batch:
                if item is _DONE:
                    finished = True
                elif isinstance(item, BaseException):
                    raise item
                else:
                    chunk.extend(item)
            if chunk:
                yield chunk
        thread.join()

    async def _run_all(self, requests, groups, sampling: Sampling, results: queue.Queue) -> None:
        import openai
        from aiolimiter import AsyncLimiter

        s = self.settings
        client = openai.AsyncOpenAI(
            base_url=s.base_url, api_key=self._api_key(), max_retries=s.max_retries, timeout=s.timeout_s
        )
        in_flight = asyncio.Semaphore(s.max_concurrency)
        rpm = AsyncLimiter(s.requests_per_minute, 60) if s.requests_per_minute else None
        tpm = AsyncLimiter(s.tokens_per_minute, 60) if s.tokens_per_minute else None

        async def one(group: list[int]) -> None:
            req: ChatRequest = requests[group[0]]
            async with in_flight:
                if rpm:
                    await rpm.acquire()
                if tpm:
                    estimate = sum(len(m["content"]) for m in req.messages) // 4 + sampling.max_tokens * len(group)
                    await tpm.acquire(min(estimate, s.tokens_per_minute))
                try:
                    resp = await client.chat.completions.create(
                        model=self.cfg.model,
                        messages=req.messages,
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        max_tokens=sampling.max_tokens,
                        stop=sampling.stop or None,
                        seed=req.seed,
                        n=len(group),
                        extra_body=s.extra_body or None,
                    )
                except openai.APIError as exc:
                    status = getattr(exc, "status_code", None)
                    reason = f"{type(exc).__name__}" + (f" {status}" if status else "")
                    results.put([(pos, Completion(None, None, error=reason)) for pos in group])
                    return
            usage = resp.usage
            prompt = usage.prompt_tokens if usage else None
            per_choice = (usage.completion_tokens // len(group)) if usage and usage.completion_tokens else None
            choices = sorted(resp.choices, key=lambda c: c.index)
            out = []
            for pos, choice in zip(group, choices, strict=False):
                out.append((pos, Completion(choice.message.content, choice.finish_reason, prompt, per_choice)))
            for pos in group[len(choices) :]:  # a server that ignores n
                out.append((pos, Completion(None, None, error="missing choice (server ignored n)")))
            results.put(out)

        try:
            await asyncio.gather(*(one(g) for g in groups))
        finally:
            await client.close()

    def close(self) -> None:
        pass
