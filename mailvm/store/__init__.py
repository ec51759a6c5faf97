"""Shared state of mailvm processes: the scanned table and the job queue, local or on Redis.

The local implementations (one host) are :class:`mailvm.scantable.ScanTable` and
:class:`mailvm.vmpool.jobqueue.JobQueue`; the Redis ones (several MX and pool hosts)
are :mod:`mailvm.store.redis_table` and :mod:`mailvm.store.redis_queue`.
"""
