"""Published checkpoints: the official index, Hugging Face revisions, and a robust HTTP downloader.

- `index`: the published models (OLMo 1 and OLMo 2) -> their checkpoint index CSV files, parsed
  (`Step,Checkpoint Directory`, and OLMo 2 stage 2's `Ingredient,Step,Checkpoint Directory`).
- `hf`: the revisions (branches such as `step1000-tokens4B`, `stage1-step928646-tokens3896B`) of a
  Hugging Face model repository.
- `listing`: which upstream files a checkpoint directory URL holds (HEAD probes; no listing API).
- `download`: parallel, ranged, resumable, verified downloads into `step{N}-unsharded/` directories
  (and a Hugging Face revision's files, listed by `hf.list_repo_files`, into `{revision}/`).

Nothing here prints: progress and retries are reported as the events in `events`.
"""
