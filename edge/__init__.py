"""glm-edge runtime: run GLM-4.6V-Flash bundles (GGUF decoder + ONNX vision encoder) locally."""

__version__ = "0.1.0"

# name -> module, imported on first use (`edge.Runtime` without llama.cpp for users of the light modules)
_LAZY = {"Runtime": "edge.runtime", "run_agent": "edge.chat.agent", "stream_agent": "edge.chat.agent",
         "McpHost": "edge.chat.mcp_host"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
