"""Training losses, one module per idea."""
