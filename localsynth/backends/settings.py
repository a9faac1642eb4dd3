"""Settings of the generator: which backend and model, sampling, and each backend's own knobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from localsynth.config import Strict


class Sampling(Strict):
    """Sampling parameters (not published by the paper; these are ours)."""

    temperature: float = Field(default=1.0, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(default=160, ge=1, description="Most tokens generated per request.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a generation.")
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, le=2.0,
        description="Penalty on tokens already in the prompt or output (1: none; vllm, hf, and OpenAI-compatible "
        "servers that accept it, such as vLLM's; the OpenAI API does not). Small models loop without it.",
    )


class VllmSettings(Strict):
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one engine spans.")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Share of GPU memory vLLM may take (weights and KV cache); None: 0.90 on GPUs. On a CPU build "
        "vLLM reads it as a share of the RAM, so None there sizes the KV cache by cpu_kv_cache_gib instead.",
    )
    cpu_kv_cache_gib: float = Field(
        default=2.0, gt=0.0, description="KV cache of a CPU-only vLLM build, in GiB (when gpu_memory_utilization is None)."
    )
    max_model_len: int | None = Field(default=None, ge=16, description="Context length; None: the model's own.")
    dtype: str = Field(default="auto", description="Weight dtype passed to vLLM ('auto', 'bfloat16', ...).")
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV cache of shared prompt prefixes (system prompt, history)."
    )
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs (faster start, slower decoding).")
    max_num_seqs: int | None = Field(default=None, ge=1, description="Most sequences per engine step; None: vLLM's default.")
    submit_chunk: int = Field(
        default=0, ge=0, description="Requests per engine call; 0 sends every request of a round at once."
    )
    use_n: bool = Field(
        default=False,
        description="Merge identical prompts of a round into one request with n > 1 (vLLM then samples member i "
        "with the first member's seed + i, not its own).",
    )
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for vllm.LLM.")


class OpenAISettings(Strict):
    base_url: str | None = Field(default=None, description="None: the OpenAI API; else any compatible server.")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(default=16, ge=1, description="Most HTTP requests in flight, retries included.")
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Average request rate limit (bursts of at most one second's worth); None: none."
    )
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="Token rate limit (prompt estimate + max_tokens per request); None: none."
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Seconds before one HTTP attempt times out.")
    max_retries: int = Field(
        default=8, ge=0, description="Retries of a request on 408/409/429/5xx/timeouts (Retry-After honoured)."
    )
    use_n: bool = Field(default=False, description="Merge identical prompts into one request with n > 1.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra JSON fields sent with every request.")


class HFSettings(Strict):
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, mps, cuda or cuda:N."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight dtype; auto is float32 on CPU and the model's own on GPU."
    )
    batch_size: int = Field(default=16, ge=1, description="Requests per generate() call.")


class Pricing(Strict):
    input_per_million: float | None = Field(default=None, ge=0, description="Dollars per 1M prompt tokens.")
    output_per_million: float | None = Field(default=None, ge=0, description="Dollars per 1M completion tokens.")


MODEL_CHOICES = (
    "A local model folder, a .gguf file, a packaged model name (`localsynth models`), tiny-random (a random "
    "smoke-test model), or the served model name (openai). None: smollm2-135m-instruct (hf, vllm)."
)


class GeneratorConfig(Strict):
    backend: Literal["hf", "vllm", "openai"] = Field(
        default="hf", description="hf (transformers), vllm (offline engine) or openai (any compatible server)."
    )
    model: str | None = Field(default=None, description=MODEL_CHOICES)
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling parameters.")
    vllm: VllmSettings = Field(default_factory=VllmSettings, description="Settings of the vllm backend.")
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="Settings of the openai backend.")
    hf: HFSettings = Field(default_factory=HFSettings, description="Settings of the hf backend.")
    pricing: Pricing = Field(default_factory=Pricing, description="Token prices, for cost estimates and stats.")

