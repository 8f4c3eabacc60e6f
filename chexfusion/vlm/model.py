"""A pretrained vision-language model as two encoders and a logit scale (:func:`load_vlm`).

* ``hf:ID_OR_FOLDER``: a transformers CLIP / SigLIP-style model (MedSigLIP ...), loaded offline like
  any ``hf:`` encoder (:mod:`chexfusion.models.hf_encoder`: a local folder or the Hugging Face
  cache, safetensors only, no ``trust_remote_code``), its tokenizer saved in the same folder;
  images preprocessed as its ``preprocessor_config.json`` says;
* ``open_clip:ID_OR_FOLDER``: an open_clip model (BiomedCLIP, CheXzero's ViT-B/32 ...) from its
  ``local-dir:`` folder (:mod:`chexfusion.models.open_clip_encoder`), with open_clip's tokenizer
  for it and its ``preprocess_cfg``.

The embeddings are the model's own projected ones and the logit scale its learned one.
"""

from __future__ import annotations

import torch

from ..data.images import Preprocess
from ..errors import UserError
from ..models.encoders import parse_encoder_spec
from ..models.hf_encoder import hf_preprocess, load_quietly, resolve_hf_folder

TEXT_BATCH = 64


def _pooled(output) -> torch.Tensor:
    """transformers returns the projected embedding as a tensor, or (v5) as ``pooler_output``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_vlm(spec_text: str, device: str = "cpu"):
    """The vision-language model ``spec_text`` names (``hf:`` or ``open_clip:``), in eval mode on ``device``."""
    spec = parse_encoder_spec(spec_text)
    if spec.family == "hf":
        return VisionLanguageModel(spec_text, device)
    if spec.family == "open_clip":
        return OpenClipVisionLanguageModel(spec_text, device)
    raise UserError(f"--vlm {spec_text}: give a vision-language model as hf:ID_OR_FOLDER or open_clip:ID_OR_FOLDER")


class VisionLanguageModel:
    """Image and text embeddings in the model's shared space, and the logit scale that compares them."""

    def __init__(self, spec_text: str, device: str = "cpu"):
        import transformers

        spec = parse_encoder_spec(spec_text)
        self.spec, self.folder = str(spec), resolve_hf_folder(spec.target)
        self.device = torch.device(device)
        model = load_quietly(spec_text, lambda: transformers.AutoModel.from_pretrained(
            str(self.folder), local_files_only=True, use_safetensors=True, dtype=torch.float32))
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise UserError(f"--vlm {spec_text}: {type(model).__name__} is not a vision-language model "
                            f"(CLIP / SigLIP style, with an image and a text tower)")
        self.tokenizer = load_quietly(spec_text, lambda: transformers.AutoTokenizer.from_pretrained(
            str(self.folder), local_files_only=True))
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.preprocess = Preprocess.from_dict(hf_preprocess(self.folder))
        # SigLIP was trained on texts padded to a fixed length; CLIP-style models pad to the longest
        self._padding = "max_length" if "siglip" in str(model.config.model_type) else True

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        max_length = min(int(self.tokenizer.model_max_length), self._text_positions())
        for start in range(0, len(texts), TEXT_BATCH):
            batch = self.tokenizer(texts[start:start + TEXT_BATCH], padding=self._padding, truncation=True,
                                   max_length=max_length, return_tensors="pt").to(self.device)
            kwargs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            out.append(_pooled(self.model.get_text_features(**kwargs)).float().cpu())
        return torch.cat(out)

    def _text_positions(self) -> int:
        text_config = getattr(self.model.config, "text_config", None)
        return int(getattr(text_config, "max_position_embeddings", 77))

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=images.to(self.device))).float().cpu()


class OpenClipVisionLanguageModel:
    """The same interface for an open_clip model (``encode_image`` / ``encode_text``, its own tokenizer)."""

    def __init__(self, spec_text: str, device: str = "cpu"):
        from ..models import open_clip_encoder as oc

        self.folder = oc.resolve_folder(parse_encoder_spec(spec_text).target)
        self.device = torch.device(device)
        model = oc.create_open_clip(self.folder, pretrained=True)
        self.model = model.eval().requires_grad_(False).to(self.device)
        open_clip = oc.import_open_clip()
        self.tokenizer = load_quietly(spec_text, lambda: open_clip.get_tokenizer(f"local-dir:{self.folder}"))
        self.preprocess = Preprocess.from_dict(oc.open_clip_preprocess(model, self.folder))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = [self.model.encode_text(self.tokenizer(texts[start:start + TEXT_BATCH]).to(self.device)).float().cpu()
               for start in range(0, len(texts), TEXT_BATCH)]
        return torch.cat(out)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images.to(self.device)).float().cpu()
