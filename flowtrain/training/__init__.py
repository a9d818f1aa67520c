"""The training loop and what it leans on: batches, optimizer, checkpoints, logging."""
