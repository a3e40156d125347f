"""Experiments: the hyperparameter search, its decisions, trial bodies, the controller."""
