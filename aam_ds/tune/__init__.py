"""``aam-ds tune``: hyperparameter search over run-spec fields with Optuna (space.py: the YAML search
space; study.py: trials as normal runs, pruning, resuming, best spec and plots; cli.py: the command)."""
