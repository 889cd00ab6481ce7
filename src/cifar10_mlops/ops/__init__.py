"""Commands around the pipeline: publish (a new dataset version), checkout and verify (a
registered version's pipeline state), notify, pool (work-pool checkouts), backlog (the
published-data retrains waiting), smoke, overrides
(`-S`-style params edits), prefect_server, plots_template, retrain_report (the flow's report)
and reference_pages (docs pages generated from the code)."""
