"""Label fidelity: an LLM judge picks one label for each text, and the audit compares it with
the label the text was generated for. Where the paper's generator fails (subjective labels), a
judge of the same family disagrees with it most, before anything is trained.

The judge's answer is always one of the label names, and how that is guaranteed depends on the
backend; the method is recorded with the results:
- vllm: structured outputs constrained to the names (`StructuredOutputsParams(choice=...)`,
  vLLM 0.32), greedy: the engine can only emit a label name, then end.
- hf: no sampling at all: the log-likelihood of each complete answer (the label name and the
  end of the assistant turn, as the chat template writes it) given the prompt, and the best one.
  The softmax of those log-likelihoods over the labels is the judge's confidence.
- openai: a JSON schema whose only field is an enum of the names, where the server honours
  `response_format` (vLLM's server and OpenAI's do); otherwise greedy text matched to a name
  (`parse`; an answer naming no label, or two, is `None`).

The judge is the generator by default (the run's own model), or any model through the same
backends and settings (`GeneratorConfig`), loaded once and reusable across sets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from localsynth.backends.base import ChatRequest
from localsynth.backends.settings import GeneratorConfig, Sampling
from localsynth.errors import UserError
from localsynth.progress import log

PROMPT_VERSION = 1  # part of the key of saved verdicts: change it when the prompt changes
MAX_TEXT_CHARS = 2000  # a judge prompt stays short; longer texts are cut (the label shows early)
METHODS = {"vllm": "vllm-structured-choice", "hf": "hf-exact-loglik",
           "json": "openai-json-schema-enum", "parse": "openai-parse"}


def judge_messages(text: str, labels: Sequence[str], descriptions: dict[str, str] | None = None,
                   title: str | None = None, text_kind: str = "text") -> list[dict[str, str]]:
    """One user turn (every chat template accepts it; some refuse a system turn)."""
    descriptions = descriptions or {}
    lines = "\n".join(f"- {name}: {descriptions[name]}" if descriptions.get(name) else f"- {name}" for name in labels)
    task = f" for the task '{title}'" if title else ""
    content = (f"Classify the {text_kind} below{task}. The labels are:\n{lines}\n\n"
               f"{text_kind[:1].upper() + text_kind[1:]}: \"{text[:MAX_TEXT_CHARS]}\"\n\n"
               f"Answer with exactly one label name ({', '.join(labels)}) and nothing else.")
    return [{"role": "user", "content": content}]


def _norm(text: str) -> str:
    return re.sub(r"[^\w]+|_", " ", text.lower()).strip()


def match_label(answer: str | None, labels: Sequence[str]) -> str | None:
    """The label a free-text answer names: equal after normalisation, else the one label whose
    name occurs in it as whole words (a name inside another found name, irony in non_irony,
    does not count); None when it names none or several."""
    if not answer:
        return None
    text = _norm(answer)
    for label in labels:
        if _norm(label) == text:
            return label
    found = [lab for lab in labels if re.search(rf"(?<!\w){re.escape(_norm(lab))}(?!\w)", text)]
    found = [lab for lab in found if not any(o != lab and _norm(lab) in _norm(o) for o in found)]
    return found[0] if len(found) == 1 else None


@dataclass
class Verdicts:
    labels: list[str | None]  # the judge's label per text (None: no usable answer)
    confidence: list[float | None]  # hf: softmax of the answers' log-likelihoods; else None
    method: str
    errors: int = 0


def _rekey(message: str, key: str) -> str:
    return message.replace("generator.", f"{key}.") if key != "generator" else message


class Judge:
    """An LLM judge on one backend: load once, judge any number of sets, close."""

    def __init__(self, cfg: GeneratorConfig, key: str = "judge.generator"):
        self.cfg, self.key = cfg, key
        self.backend: Any = None

    @classmethod
    def on(cls, backend: Any) -> Judge:
        """A judge on a backend that is already loaded (the generator's own engine, during
        generation): no second engine. The caller keeps ownership: close() leaves it open."""
        judge = cls(backend.cfg)
        judge.backend, judge._borrowed = backend, True
        return judge

    def load(self) -> None:
        from localsynth.backends import make_backend

        log(f"loading the judge: {self.cfg.backend} {self.cfg.model or 'default model'}")
        backend = make_backend(self.cfg)
        try:
            backend.load()
        except UserError as exc:
            raise UserError(_rekey(str(exc), self.key)) from None
        self.backend = backend

    def close(self) -> None:
        if self.backend is not None and not getattr(self, "_borrowed", False):
            self.backend.close()
        self.backend = None

    def judge(self, texts: Sequence[str], labels: Sequence[str], descriptions: dict[str, str] | None = None,
              title: str | None = None, text_kind: str = "text") -> Verdicts:
        if self.backend is None:
            self.load()
        labels = list(labels)
        bad = [lab for lab in labels if not lab or not lab.strip()]
        if bad or len(set(labels)) != len(labels) or len(labels) < 2:
            raise UserError(f"labels: the judge needs at least two distinct, non-empty label names; got {labels}")
        messages = [judge_messages(t, labels, descriptions, title, text_kind) for t in texts]
        run = {"vllm": _vllm_choice, "hf": _hf_loglik, "openai": _openai}[self.cfg.backend]
        return run(self.backend, messages, labels)


# ----------------------------------------------------------------------------- vLLM


def _vllm_choice(backend: Any, messages: list[list[dict[str, str]]], labels: list[str]) -> Verdicts:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    tokenizer = backend.tokenizer
    longest = max(len(tokenizer(lab, add_special_tokens=False)["input_ids"]) for lab in labels)
    params = SamplingParams(temperature=0.0, max_tokens=longest + 8,
                            structured_outputs=StructuredOutputsParams(choice=labels))
    ids = tokenizer([backend.render(m) for m in messages], add_special_tokens=False)["input_ids"]
    fits = [i for i, row in enumerate(ids) if len(row) + longest + 8 <= backend.max_model_len]
    out: list[str | None] = [None] * len(messages)
    if fits:
        results = backend.llm.generate([backend._prompt(list(ids[i])) for i in fits], params, use_tqdm=False)
        for i, result in zip(fits, results):
            text = result.outputs[0].text.strip() if result.outputs else ""
            out[i] = text if text in labels else None
    errors = sum(v is None for v in out)
    return Verdicts(out, [None] * len(out), METHODS["vllm"], errors)


# ----------------------------------------------------------------------------- transformers


def answer_suffix(tokenizer: Any, messages: list[dict[str, str]], label: str) -> tuple[str, str]:
    """(prompt, answer): the chat-rendered prompt and what the template appends for an
    assistant turn that says `label` (the name and the end-of-turn marker), trailing spaces
    after the marker dropped. A template that rewrites earlier turns gives the bare name."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": label}], tokenize=False)
    answer = full[len(prompt):].rstrip() if full.startswith(prompt) else label
    return prompt, answer or label


def _hf_loglik(backend: Any, messages: list[list[dict[str, str]]], labels: list[str]) -> Verdicts:
    import torch

    tok, model = backend.tokenizer, backend.model
    pairs: list[tuple[list[int], list[int]]] = []
    for m in messages:
        for label in labels:
            prompt, answer = answer_suffix(tok, m, label)
            pairs.append((tok(prompt, add_special_tokens=False)["input_ids"],
                          tok(answer, add_special_tokens=False)["input_ids"]))
    scores = np.empty(len(pairs), dtype=np.float64)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    size = max(1, backend.settings.batch_size)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    with torch.inference_mode():
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            seqs = [pairs[i][0] + pairs[i][1] for i in batch]
            width = max(len(s) for s in seqs)
            keep = max(len(pairs[i][1]) for i in batch)
            # left padding: every answer ends at the last position, so only the last `keep` + 1
            # positions need logits (a full vocabulary per position is the memory cost)
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=backend.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=backend.device)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           logits_to_keep=keep + 1).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            for row, i in enumerate(batch):
                answer = pairs[i][1]
                targets = torch.tensor(answer, device=backend.device)
                span = logp[row, keep - len(answer):]
                scores[i] = float(span.gather(1, targets[:, None]).sum())
    scores = scores.reshape(len(messages), len(labels))
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    best = scores.argmax(axis=1)
    return Verdicts([labels[j] for j in best], [float(probs[i, j]) for i, j in enumerate(best)], METHODS["hf"])


# ----------------------------------------------------------------------------- OpenAI-compatible


def json_schema_format(labels: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": labels}},
              "required": ["label"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": schema}}


def _from_json(text: str | None, labels: list[str]) -> str | None:
    try:
        value = json.loads(text or "").get("label")
    except (ValueError, AttributeError):
        return None
    return value if value in labels else None


def _ask(backend: Any, messages: list[list[dict[str, str]]], max_tokens: int) -> list[str | None]:
    out: list[str | None] = [None] * len(messages)
    requests = [ChatRequest(f"judge-{i}", m, 0) for i, m in enumerate(messages)]
    for batch in backend.generate(requests, Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens)):
        for pos, completion in batch:
            out[pos] = completion.text if completion.error is None else None
    return out


def _openai(backend: Any, messages: list[list[dict[str, str]]], labels: list[str]) -> Verdicts:
    from localsynth.backends.openai import OpenAIBackend

    schema_cfg = backend.cfg.model_copy(deep=True)
    schema_cfg.openai.extra_body = {**schema_cfg.openai.extra_body, "response_format": json_schema_format(labels)}
    constrained = OpenAIBackend(schema_cfg)
    constrained._start()
    try:  # one probe: a server that ignores or refuses response_format falls back to parsing
        probe = _ask(constrained, messages[:1], 64)[0] if messages else None
        if probe is not None and _from_json(probe, labels) is not None:
            answers = [probe, *_ask(constrained, messages[1:], 64)]
            out = [_from_json(a, labels) for a in answers]
            return Verdicts(out, [None] * len(out), METHODS["json"], sum(v is None for v in out))
    except UserError:
        pass
    finally:
        constrained.close()
    answers = _ask(backend, messages, 16)
    out = [match_label(a, labels) for a in answers]
    return Verdicts(out, [None] * len(out), METHODS["parse"], sum(v is None for v in out))


# ----------------------------------------------------------------------------- summary


def summary(given: Sequence[str], judged: Sequence[str | None], labels: list[str], method: str) -> dict[str, Any]:
    """Agreement overall and per given label (the share of a label's rows the judge gives that
    label), and the confusion matrix: rows the given label, columns the judge's (plus 'none')."""
    columns = [*labels, "none"]
    matrix = {g: dict.fromkeys(columns, 0) for g in labels}
    for g, j in zip(given, judged):
        matrix[g][j if j is not None else "none"] += 1
    per = {}
    for g in labels:
        n = sum(matrix[g].values())
        per[g] = {"rows": n, "agree": matrix[g][g], "agreement": matrix[g][g] / n if n else None}
    agree = sum(matrix[g][g] for g in labels)
    return {"method": method, "rows": len(given), "agree": agree, "agreement": agree / len(given) if given else None,
            "unanswered": sum(j is None for j in judged), "per_label": per, "confusion": matrix}
