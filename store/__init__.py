"""Call records: every call and text remembered in SQLite or PostgreSQL (``DATABASE_URL``), and the stream
tokens spent across workers. Nothing here runs per audio frame."""
