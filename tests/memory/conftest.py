from tests.storage.dbs import db, pg_db, pg_url, sqlite_db, sqlite_template

__all__ = ["db", "pg_db", "pg_url", "sqlite_db", "sqlite_template"]
