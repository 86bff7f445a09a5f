"""Models: the configurable CNN, its quantization-aware form, preprocessing inside the
exported graph, and the checkpoint format."""
