"""Zero-shot scores of a contrastive model: each class's prompt pair encoded by the model's own text tower, each
image scored by CheXzero's softmax over the pair (``vlm.prompts``, the same arithmetic as ``chexfusion
zero-shot`` for pretrained models)."""

from __future__ import annotations

import torch

from ..vlm.prompts import PromptConfig, ensemble, pair_probabilities, prompt_sets

TEXT_BATCH = 64


@torch.no_grad()
def encode_sentences(model, tokenizer, texts: list[str], max_tokens: int) -> torch.Tensor:
    """``[n, D]`` unit embeddings of ``texts`` by the model's text tower (on its device, returned on the CPU)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), TEXT_BATCH):
        tokens = tokenizer(texts[start:start + TEXT_BATCH], padding=True, truncation=True, max_length=max_tokens,
                           return_tensors="pt").to(device)
        out.append(model.encode_texts(tokens["input_ids"], tokens["attention_mask"]).float().cpu())
    return torch.cat(out)


def prompt_embeddings(model, tokenizer, classes: list[str], cfg: PromptConfig,
                      max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[K, D]`` positive and negative prompt-ensemble embeddings of ``classes``."""
    positive, negative = [], []
    for name in classes:
        pos_texts, neg_texts = prompt_sets(name, cfg)
        positive.append(ensemble(encode_sentences(model, tokenizer, pos_texts, max_tokens)))
        negative.append(ensemble(encode_sentences(model, tokenizer, neg_texts, max_tokens)))
    return torch.stack(positive), torch.stack(negative)


@torch.no_grad()
def image_probabilities(model, images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``[n, K]`` probabilities of ``images`` (one per image) on the CPU, at the model's learned logit scale."""
    device = next(model.parameters()).device
    embeddings = model.encode_images(images.to(device)).float().cpu()
    return pair_probabilities(embeddings, positive, negative, float(model.logit_scale()))
