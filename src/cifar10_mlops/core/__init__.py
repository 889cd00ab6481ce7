"""Plumbing every part uses: settings (params.yaml) and validation, errors, files (atomic
writes, digests), archive, dataset and splits (data formats), tracking, lineage and artifacts
(MLflow; artifacts: the digests checked before a model runs), repo (git and DVC), health
(servers), quiet (library noise) and stage (entry points)."""
