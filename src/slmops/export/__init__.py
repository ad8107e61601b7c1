"""Exports: GGUF for llama.cpp and Ollama (and ONNX), parity checks against the parent, and the optimizer.

Importing this package is light; each module imports its heavy dependencies inside the functions that need them.
"""
