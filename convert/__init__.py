"""glm-edge converter: HF GLM-4.6V-Flash checkpoints -> glm-edge bundles (GGUF decoder, projector, ONNX vision)."""
