"""Any OpenAI-compatible chat endpoint: GPT-3.5-Turbo, a `vllm serve` server, others.

Requests run concurrently on one asyncio loop in a helper thread that lives as long as the
backend (so connections, the concurrency bound and the rate limiters carry over from round to
round), bounded by a semaphore (the number of HTTP requests in flight never exceeds
`max_concurrency`, retries included: the official client retries inside the bounded call) and by
optional requests- and tokens-per-minute limiters. Retries with exponential backoff that honour
Retry-After / Retry-After-ms on 408 / 409 / 429 / 5xx / timeouts are the official client's own;
a request still failing after `max_retries` becomes a row with an error, not an exception.
Errors that no retry can fix (the key rejected, the model or endpoint unknown, every request
refused as malformed) stop the run with one message instead of filling a shard with failures.

The API key is read from the environment variable named in the config and goes nowhere else:
not into the config, the rows, the stats or the messages (a server echoing it is redacted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable, Sequence

from localsynth.backends.base import ChatRequest, Completion, Results, group_identical
from localsynth.backends.settings import GeneratorConfig, Sampling
from localsynth.errors import UserError, require
from localsynth.secrets import redact

_DONE = object()
# A run whose first requests are all refused as malformed has a settings problem, not bad luck.
_REFUSED_BEFORE_ABORT = 8


def per_minute_limiter(per_minute: float):
    """A limiter for an average of `per_minute` acquisitions, with bursts of at most one
    second's worth (a minute-long bucket would let a whole minute's requests out at once, which
    servers that enforce limits per second refuse)."""
    from aiolimiter import AsyncLimiter

    per_second = per_minute / 60.0
    if per_second >= 1.0:
        return AsyncLimiter(per_second, 1.0)
    return AsyncLimiter(1, 60.0 / per_minute)


class OpenAIBackend:
    name = "openai"
    gpus = 0  # remote: no local GPU time

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        self.settings = cfg.openai
        self.model_name = cfg.model or ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client = None
        self._in_flight: asyncio.Semaphore | None = None
        self._rpm = None
        self._tpm = None
        self._succeeded = 0
        self._refused = 0

    @property
    def _where(self) -> str:
        return redact(self.settings.base_url) if self.settings.base_url else "the OpenAI API"

    def _api_key(self) -> str:
        key = os.environ.get(self.settings.api_key_env)
        if key:
            return key
        if self.settings.base_url is None:
            raise UserError(
                f"no API key: the environment variable {redact(self.settings.api_key_env)} is not set; export it "
                f"(or name another variable with generator.openai.api_key_env)"
            )
        return "EMPTY"  # local OpenAI-compatible servers usually need none

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.settings.api_key_env)
        text = text.replace(key, "***") if key and len(key) >= 4 else text
        return redact(text)

    def load(self) -> None:
        """Check that the server answers and serves the model, then start the request loop."""
        openai = require("openai")
        s, where = self.settings, self._where
        client = openai.OpenAI(base_url=s.base_url, api_key=self._api_key(), max_retries=1, timeout=min(s.timeout_s, 30.0))
        try:
            served = [m.id for m in client.models.list()]
        except openai.AuthenticationError:
            raise UserError(f"{where} rejected the API key in ${s.api_key_env}; check that variable") from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise UserError(
                f"cannot reach an OpenAI-compatible server at {where}; start the server or fix "
                f"generator.openai.base_url (it usually ends in /v1)"
            ) from None
        except openai.APIStatusError as exc:
            raise UserError(
                f"{where} answered {exc.status_code} to GET /models; check generator.openai.base_url "
                f"(it usually ends in /v1)"
            ) from None
        finally:
            client.close()
        if served and self.cfg.model not in served:
            raise UserError(
                f"generator.model '{self.cfg.model}' is not served by {where}; it serves: {', '.join(served[:20])}; "
                f"set generator.model to one of those"
            )
        self._start()

    # ---------------------------------------------------------------- the request loop

    def _start(self) -> None:
        if self._loop is not None:
            return
        import openai

        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="localsynth-openai", daemon=True)
        thread.start()
        s = self.settings

        async def setup() -> None:
            self._client = openai.AsyncOpenAI(
                base_url=s.base_url, api_key=self._api_key(), max_retries=s.max_retries, timeout=s.timeout_s
            )
            self._in_flight = asyncio.Semaphore(s.max_concurrency)
            self._rpm = per_minute_limiter(s.requests_per_minute) if s.requests_per_minute else None
            if s.tokens_per_minute:
                from aiolimiter import AsyncLimiter

                self._tpm = AsyncLimiter(s.tokens_per_minute, 60)

        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(setup(), loop).result()
        except BaseException:
            self.close()
            raise

    def generate(self, requests: Sequence[ChatRequest], sampling: Sampling) -> Results:
        self._start()
        results: queue.Queue = queue.Queue()
        groups = group_identical(requests) if self.settings.use_n else [[i] for i in range(len(requests))]
        future = asyncio.run_coroutine_threadsafe(self._run_all(requests, groups, sampling, results.put), self._loop)
        future.add_done_callback(lambda _: results.put(_DONE))
        try:
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
                    else:
                        chunk.extend(item)
                if chunk:
                    yield chunk
            future.result()  # re-raise what stopped the round (a UserError, a bug)
        finally:
            if not future.done():  # the caller stopped early: stop asking
                future.cancel()
                try:
                    future.result(timeout=30)
                except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError, Exception):
                    pass

    async def _run_all(self, requests, groups, sampling: Sampling, put: Callable) -> None:
        tasks = [asyncio.ensure_future(self._one(requests, group, sampling, put)) for group in groups]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _one(self, requests, group: list[int], sampling: Sampling, put: Callable) -> None:
        import openai

        s = self.settings
        req: ChatRequest = requests[group[0]]
        async with self._in_flight:
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None:
                estimate = sum(len(m["content"]) for m in req.messages) // 4 + sampling.max_tokens * len(group)
                await self._tpm.acquire(min(estimate, s.tokens_per_minute))
            try:
                resp = await self._client.chat.completions.create(
                    model=self.cfg.model,
                    messages=req.messages,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    stop=sampling.stop or None,
                    seed=req.seed,
                    n=len(group),
                    extra_body=self._extra_body(sampling),
                )
            except openai.AuthenticationError:
                raise UserError(
                    f"{self._where} rejected the API key in ${s.api_key_env} (401); check that variable"
                ) from None
            except openai.PermissionDeniedError as exc:
                raise UserError(
                    f"{self._where} refused access (403) for generator.model '{self.cfg.model}': "
                    f"{self._short(exc)}; check the key's permissions and generator.model"
                ) from None
            except openai.NotFoundError as exc:
                raise UserError(
                    f"{self._where} answered 404 for generator.model '{self.cfg.model}': {self._short(exc)}; "
                    f"check generator.model and generator.openai.base_url"
                ) from None
            except openai.APIError as exc:
                status = getattr(exc, "status_code", None)
                if status in (400, 422):
                    self._refused += 1
                    if self._succeeded == 0 and self._refused >= min(_REFUSED_BEFORE_ABORT, len(requests)):
                        raise UserError(
                            f"{self._where} refused every request so far ({status}): {self._short(exc)}; check "
                            f"generator.sampling, generator.openai.extra_body and generator.model"
                        ) from None
                reason = f"{type(exc).__name__}" + (f" {status}" if status else "") + f": {self._short(exc)}"
                put([(pos, Completion(None, None, error=reason)) for pos in group])
                return
        self._succeeded += 1
        usage = resp.usage
        prompt = usage.prompt_tokens if usage else None
        per_choice = (usage.completion_tokens // len(group)) if usage and usage.completion_tokens else None
        choices = sorted(resp.choices or [], key=lambda c: c.index)
        out = []
        for pos, choice in zip(group, choices, strict=False):
            out.append((pos, Completion(choice.message.content, choice.finish_reason, prompt, per_choice)))
        for pos in group[len(choices) :]:  # a server that ignores n
            out.append((pos, Completion(None, None, error="missing choice (server ignored n)")))
        put(out)

    def _extra_body(self, sampling: Sampling) -> dict | None:
        """Fields outside the OpenAI schema: the config's extra_body, plus repetition_penalty when
        set (vLLM's server and others accept it; the OpenAI API rejects it)."""
        body = dict(self.settings.extra_body)
        if sampling.repetition_penalty != 1.0:
            body.setdefault("repetition_penalty", sampling.repetition_penalty)
        return body or None

    def _short(self, exc: Exception) -> str:
        text = str(getattr(exc, "message", None) or exc).strip().splitlines()
        return self._redact(text[0][:200] if text else type(exc).__name__)

    def close(self) -> None:
        loop, thread, client = self._loop, self._thread, self._client
        self._loop = self._thread = self._client = None
        if loop is None:
            return
        if client is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
            except Exception:  # closing connections is best effort
                pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if not loop.is_running():
            loop.close()
