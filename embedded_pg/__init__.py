"""Django database backend that runs an embedded PostgreSQL 18 + pgvector on first connection."""
