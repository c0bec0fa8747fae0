"""Files: atomic writes, model files (safetensors + metadata) and training checkpoints."""
