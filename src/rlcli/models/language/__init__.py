"""Language models: GPT-2 and its bundled demo."""
