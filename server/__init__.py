"""The HTTP edge: OpenAI-compatible routes, schemas, errors and SSE framing over `engines`."""
