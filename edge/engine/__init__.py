"""The engine: token ids, embeddings, positions and sequences on llama.cpp; nothing of images, chat or HTTP."""
