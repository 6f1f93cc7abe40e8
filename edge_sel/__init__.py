"""edge-sel: on-device fine-tuning whose savings are counted and measured."""

__version__ = "0.1.0"
