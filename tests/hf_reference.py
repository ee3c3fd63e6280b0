"""transformers as the reference oracle: greedy generation for chat messages with images and tools."""

from __future__ import annotations

import numpy as np
import torch


def hf_input(hf_model, hf_tokenizer, messages, images, tools=None, enable_thinking=True):
    """input_ids (image tokens expanded), pixel_values, grid_thw and mm_token_type_ids as the processor makes."""
    cfg = hf_model.config
    kwargs = {} if enable_thinking else {"enable_thinking": False}
    text = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs)
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    expanded, k = [], 0
    for token in ids:
        if token == cfg.image_token_id:
            expanded += [token] * images[k].n_tokens
            k += 1
        else:
            expanded.append(token)
    assert k == len(images), "the template placed a different number of images"
    input_ids = torch.tensor([expanded])
    inputs = {"input_ids": input_ids}
    if images:
        inputs["pixel_values"] = torch.from_numpy(np.concatenate([im.pixel_patches for im in images]))
        inputs["image_grid_thw"] = torch.tensor([list(im.grid_thw) for im in images])
        inputs["mm_token_type_ids"] = (input_ids == cfg.image_token_id).int()
    return inputs


def hf_greedy(hf_model, hf_tokenizer, messages, images, max_new_tokens=24, repetition_penalty=1.0, **kwargs) -> list[int]:
    inputs = hf_input(hf_model, hf_tokenizer, messages, images, **kwargs)
    with torch.no_grad():
        out = hf_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                repetition_penalty=repetition_penalty)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = set(hf_model.generation_config.eos_token_id)
    return new[:-1] if new and new[-1] in eos else new


def hf_last_logits(hf_model, hf_tokenizer, messages, images, **kwargs) -> np.ndarray:
    inputs = hf_input(hf_model, hf_tokenizer, messages, images, **kwargs)
    with torch.no_grad():
        return hf_model(**inputs).logits[0, -1].numpy()
