from tests.lifecycle.conftest import procs
from tests.storage.dbs import pg_url

__all__ = ["pg_url", "procs"]
