"""Training: point-in-time training sets through Feast (dataset.py); the model follows."""
