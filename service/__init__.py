"""Inference service (FastAPI + dynamic batching). Filled by the service issue."""
