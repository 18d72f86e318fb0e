"""Node side: the local fine-tuning loop and the Node that answers instructions."""
