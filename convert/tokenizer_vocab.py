"""The checkpoint's tokenizer as GGUF vocabulary: tokens by id, token types, merges, special ids, template.

The token list is padded to the model's embedding rows (the real checkpoint has fewer tokenizer entries
than its 151552 rows) with `[PAD<id>]` entries typed UNUSED, as llama.cpp's own converter does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from edge.errors import CheckpointError


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    ids: dict[str, int]  # added (special) tokens by content
    chat_template: str | None


def read_vocab(folder: Path, vocab_size: int) -> Vocab:
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the decoder GGUF needs the checkpoint's tokenizer")
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        model = tok["model"]
        if model.get("type") != "BPE":
            raise CheckpointError(f"{path}: tokenizer model is {model.get('type')}, expected byte-level BPE")
        by_id = {i: t for t, i in model["vocab"].items()}
        added = {t["id"]: t for t in tok.get("added_tokens", [])}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid tokenizer.json ({e})") from e
    by_id.update({i: t["content"] for i, t in added.items()})
    if max(by_id) >= vocab_size:
        raise CheckpointError(f"{path}: token id {max(by_id)} does not fit the model's {vocab_size} embedding rows")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab(tokens, types, merges, {t["content"]: i for i, t in added.items()}, _chat_template(Path(folder)))


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None
