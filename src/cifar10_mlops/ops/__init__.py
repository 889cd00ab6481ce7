"""Commands around the pipeline: publish (a new dataset version), checkout and verify (a
registered version's pipeline state), notify, pool (work-pool checkouts), smoke, overrides
(`-S`-style params edits), prefect_server, plots_template and settings_reference."""
