"""Text tasks: the Rotten Tomatoes critic snippets and a pretrained MiniLM encoder with LoRA."""
