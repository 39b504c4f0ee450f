"""Pydantic models of the OpenAI wire format (field names and order as in the spec)."""
