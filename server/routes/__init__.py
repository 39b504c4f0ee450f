"""One module per group of OpenAI routes."""
