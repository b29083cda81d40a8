"""Routers by resource: OpenAI images, native generate, jobs, images/history, operations."""
