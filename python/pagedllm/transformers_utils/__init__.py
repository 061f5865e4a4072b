"""Glue to Hugging Face transformers (tokenizers)."""
