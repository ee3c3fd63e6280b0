"""The HTTP API (FastAPI): routes, dialect mapping, request gate, media policy, scheduling and metrics."""
