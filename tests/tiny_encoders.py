"""Tiny random-weight encoders (BERT, RoBERTa) for tests, built locally and never downloaded.

Each builder saves a model and its tokenizer with `save_pretrained`, so `AutoTokenizer` and
`AutoModelForSequenceClassification` load the folder offline like a hub checkpoint. The
vocabulary is built from a given word list (words outside it become the unknown token, or
bytes for RoBERTa). With `labels`, the model is a sequence classifier whose config names the
labels (`id2label` / `label2id`), as a trained model would be saved; without, it is a bare
encoder, a stand-in for a pre-trained checkpoint that a trainer fine-tunes. A larger
`init_range` (e.g. 1.0) gives a random classifier whose predictions vary with the input (at the
default 0.02 every text gets nearly the same logits).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from pathlib import Path

WORDS = (
    "the a an and or but not no is are was be to of in on for with at by from this that it "
    "free win prize call now text reply stop claim cash urgent offer winner mobile "
    "hi hey ok see you later home love thanks sorry going come tonight tomorrow what when "
    "good bad great terrible movie film plot actor story boring funny "
    "market stock shares profit loss company bank team game match season government election"
).split()


def _words(words: Sequence[str]) -> list[str]:
    """Lower-cased, split on non-word characters, de-duplicated in order."""
    seen: dict[str, None] = {}
    for word in words:
        for piece in re.findall(r"\w+", word.lower()):
            seen.setdefault(piece, None)
    return list(seen)


def _label_kwargs(labels: Sequence[str] | None) -> dict:
    if labels is None:
        return {}
    names = list(labels)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }


def _accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def build_tiny_bert(
    out_dir: str | Path,
    labels: Sequence[str] | None,
    words: Sequence[str] = WORDS,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 128,
    init_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """A random BERT (WordPiece vocabulary: the special tokens, then `words`) saved to `out_dir`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_words(words)]
    if _accepts(BertTokenizerFast, "vocab"):  # transformers >= 5: the vocabulary in memory
        tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=max_positions)
    else:  # transformers 4: from a vocab file
        (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), model_max_length=max_positions)
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
        initializer_range=init_range,
        pad_token_id=tokenizer.pad_token_id,
        **_label_kwargs(labels),
    )
    model = BertForSequenceClassification(config) if labels is not None else BertModel(config)
    model.save_pretrained(out)
    return out


def build_tiny_roberta(
    out_dir: str | Path,
    labels: Sequence[str] | None,
    words: Sequence[str] = WORDS,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 128,
    init_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """A random RoBERTa (byte-level BPE trained on `words`, with and without a leading space)
    saved to `out_dir`. Position ids start after the padding index, as in roberta-base, so the
    usable length is `max_positions - 2`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        RobertaConfig,
        RobertaForSequenceClassification,
        RobertaModel,
        RobertaTokenizerFast,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(specials) + len(alphabet) + 8 * len(words), special_tokens=specials, initial_alphabet=alphabet
    )
    corpus = _words(words)
    bpe.train_from_iterator([" ".join(corpus), *corpus, *(f"a {w}" for w in corpus)], trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab = state["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    usable = max_positions - 2
    if _accepts(RobertaTokenizerFast, "merges"):  # transformers >= 5
        tokenizer = RobertaTokenizerFast(
            vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=usable
        )
    else:
        (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = RobertaTokenizerFast(
            vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"), model_max_length=usable
        )
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
        initializer_range=init_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_label_kwargs(labels),
    )
    model = RobertaForSequenceClassification(config) if labels is not None else RobertaModel(config)
    model.save_pretrained(out)
    return out
