"""Evaluation engines: plain functions over a model and a tokenizer; nothing here prints.

The pipeline of `olmo eval`, entered through `run.run_eval` (progress as `events`):
    tasks:      tasks.py (names -> TaskData, from package_data.py / arrow.py / taskfile.py; the
                upstream row formats and reported metrics in formats.py, MMLU in mmlu.py)
                -> requests.py (documents -> scoring requests) -> scoring.py (packed forward passes ->
                log-likelihoods) -> metrics.py (rank classification, acc / len_norm / f1)
                -> downstream.py (one task end to end: prepare_task, evaluate_prepared -> TaskResult)
    perplexity: perplexity_sources.py (whole token files or raw text -> cross-entropy, bits per byte)
    harness:    harness.py (lm-evaluation-harness tasks through our model)
    results:    results.py (EvalRun: every number and what produced it; the --output file)
In the training loop: perplexity.py (upstream's "lm" evaluators) and in_loop.py (downstream tasks on
every rank). quantized.py measures what quantizing cost (`olmo quantize`'s report).
"""
