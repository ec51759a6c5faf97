"""The web console of ``mailvm serve``: quarantine, audit log, file reports, pool figures."""
