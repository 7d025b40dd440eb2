"""The data engine: tokenizers, the tokenize pipeline, token files and their datasets, the data order.

Nothing here imports typer or rich or prints; progress goes to callbacks that `olmo_cli.ui` renders.
"""
