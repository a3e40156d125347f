"""TrainingRuns: observation, checks, GPU allocation, decisions, child bodies, the controller."""
