"""glm-edge runtime: run GLM-4.6V-Flash bundles (GGUF decoder + ONNX vision encoder) locally."""

__version__ = "0.1.0"


def __getattr__(name):
    # `edge.Runtime` without importing llama.cpp for users of the light modules (errors, image, parse).
    if name == "Runtime":
        from edge.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
