"""Stage 1: the image-level model (timm backbone + ML-Decoder), trained on single images."""
