"""Offline synthetic material for tests, benchmarks and the GPU check, where no hub is reachable: a word-level
tokenizer, a small sentiment-like task (label 1 when a sentence has more positive than negative words), and
model folders built from configs with random weights, saved so that they load like any local model."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = [
    "good",
    "great",
    "fine",
    "superb",
    "lovely",
    "bad",
    "awful",
    "poor",
    "dull",
    "boring",
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "was",
    "is",
    "very",
    "not",
    "quite",
    "rather",
    "story",
    "music",
    "ending",
    "script",
    "cast",
]
POSITIVE, NEGATIVE = set(WORDS[:5]), set(WORDS[5:10])


def tokenizer(decoder: bool):
    """A word-level fast tokenizer over WORDS: [CLS] a [SEP] for encoders, <s> a for decoders (pad = eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if decoder:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="[UNK]",
            model_input_names=["input_ids", "attention_mask"],
        )
        tok.pad_token = tok.eos_token
        return tok
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def write_task(
    folder: Path, n_train: int, n_val: int, seed: int = 0, words: tuple[int, int] = (3, 14)
) -> dict[str, str]:
    """train.csv and validation.csv (columns text, label) in ``folder``; returns split -> path."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("validation", n_val)):
        rows = ["text,label"]
        for _ in range(n):
            sentence = [rng.choice(WORDS) for _ in range(rng.randint(*words))]
            label = int(sum(w in POSITIVE for w in sentence) > sum(w in NEGATIVE for w in sentence))
            rows.append(f"{' '.join(sentence)},{label}")
        path = folder / f"{split}.csv"
        path.write_text("\n".join(rows) + "\n")
        files[split] = str(path)
    return files


def save_model(folder: Path, config, decoder: bool, seed: int = 0, dtype=None) -> Path:
    """A random-weight 2-class sequence classifier of ``config``'s architecture and its tokenizer, saved to
    ``folder`` (reused when it already holds one)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if (folder / "config.json").is_file():
        return folder
    tok = tokenizer(decoder)
    torch.manual_seed(seed)
    config.pad_token_id = tok.pad_token_id
    config.num_labels = 2
    model = AutoModelForSequenceClassification.from_config(config, **({"dtype": dtype} if dtype else {}))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
