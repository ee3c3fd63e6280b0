"""glm-edge runtime: run GLM-4.6V-Flash bundles (GGUF decoder + ONNX vision encoder) locally."""

__version__ = "0.1.0"
