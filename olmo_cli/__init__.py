"""olmo: train and use OLMo-family open language models from one command line."""

__version__ = "0.1.0"
