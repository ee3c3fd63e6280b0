"""Vision: HF-exact media preprocessing, the ONNX ViT, the projector and the embedding cache."""
