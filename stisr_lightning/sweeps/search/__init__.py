"""Hyperparameter search (`search:` sweep files): an optuna study whose trials are cells of the sweep engine.

The driver owns every trial decision (ask/tell): a worker asks the study for params, runs them as one `stisr-train
fit` cell through the engine's launcher (same run folders, logs, store records, Ctrl-C and crash handling), reads
the cell's results.json and tells the study. The study lives in the same storage URL as the results store, so many
workers (threads here, processes on other machines with `--storage postgresql://...`) share it. Pruning happens
inside the trial's process: `OptunaPruning` reports the validation metric after every validation and stops the run
when the study's pruner says so. The storage URL reaches it through the environment, never through the config (it
may hold a password, and the config lands in results.json and W&B).

`spec` reads the file, `study` holds the optuna side (objective, trials table), `runner` drives the trials and writes
the report (trials.md, trials.csv, best.yaml); the pruning callback lives with the callbacks
(`stisr_lightning.callbacks.pruning`).
"""
