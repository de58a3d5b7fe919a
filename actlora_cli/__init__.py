"""actlora: activation-guided layer selection for LoRA, from one YAML-driven command line."""

__version__ = "0.1.0"
