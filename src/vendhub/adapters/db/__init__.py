"""Relational storage (SQLite, PostgreSQL, MariaDB/MySQL) through SQLAlchemy Core."""
