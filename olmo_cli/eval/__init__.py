"""Evaluation: in-loop perplexity on token files (more evaluators, such as multiple-choice tasks, join
here). Plain functions over a model and a dataset; nothing here prints."""
