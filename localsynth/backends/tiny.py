"""Tiny random-weight models built on the spot: for smoke runs and tests, never for real data.

A small Llama with a byte-level BPE tokenizer trained in a fraction of a second on the task
prompts, saved with `save_pretrained` so every backend (transformers, vLLM) loads it from a
local folder with no download. Its texts are meaningless: it only exercises the machinery.
"""

from __future__ import annotations

import os
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


def _corpus() -> list[str]:
    """Text to train the tokenizer on: the shipped prompts and label descriptions."""
    from localsynth.tasks import configs_root

    lines = []
    for path in sorted((configs_root() / "tasks").glob("*.yaml")):
        lines.extend(path.read_text(encoding="utf-8").splitlines())
    return lines or ["a tiny model for smoke tests"]


def build_tiny_llama(out_dir: str | Path, vocab_size: int = 1024, layers: int = 2, seed: int = 0) -> Path:
    """Save a random Llama causal LM and its tokenizer (with a chat template) to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,  # head_dim 64: what vLLM's CPU attention expects
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    return out


def smoke_model_dir() -> Path:
    """The tiny smoke model, built once per machine in the user cache."""
    root = Path(os.environ.get("LOCALSYNTH_CACHE", Path.home() / ".cache" / "localsynth"))
    path = root / "tiny-smoke-llama"
    if not (path / "config.json").is_file():
        tmp = root / f".tiny-smoke-llama.tmp-{os.getpid()}"
        build_tiny_llama(tmp)
        tmp.replace(path) if not path.exists() else None
    return path
