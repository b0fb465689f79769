"""Optional integrations, each behind its own extra: ``prometheus``, ``otel``, ``fastapi``."""
