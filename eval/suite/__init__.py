"""The success suite (`mfp bench suite`): runner.py (jobs, training, evaluation, resumable), report.py (Markdown
table + plot), published.py (difficulty groups and the papers' numbers), results_file.py (the append-only JSON
lines file), variants.py (a head with some settings changed, under its own label)."""
