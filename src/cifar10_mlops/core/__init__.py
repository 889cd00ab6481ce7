"""Plumbing every part uses: settings (params.yaml) and validation, errors, files (atomic
writes, digests), archive, dataset and splits (data formats), tracking and lineage (MLflow),
repo (git and DVC), health (servers), quiet (library noise) and stage (entry points)."""
