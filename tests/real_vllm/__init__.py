"""Tests against a real vLLM server (run with `make test-vllm`)."""
