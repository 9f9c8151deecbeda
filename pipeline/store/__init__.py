"""The SQL feedback store (SQLite or PostgreSQL) and its migrations."""
