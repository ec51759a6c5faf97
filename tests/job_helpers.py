"""Build the milter -> worker contract (mailvm.job) in tests the way the policy does."""

from __future__ import annotations

from mailvm.job import AnalysisSettings, ScanJob


def settings(detonate: bool = True, kinds=(), links: bool = False, max_links: int = 10,
             max_link_bytes: int = 16 * 1024 * 1024, passwords=(), max_wait_s: float = 120.0) -> AnalysisSettings:
    return AnalysisSettings(max_wait_s=max_wait_s, detonate=detonate, detonate_kinds=tuple(kinds),
                            links_enabled=links, max_links=max_links, max_link_bytes=max_link_bytes,
                            archive_passwords=tuple(passwords))


def scan_job(path: str, deadline: float, **kw) -> ScanJob:
    static_only = kw.pop("static_only", False)
    return ScanJob(path=str(path), settings=settings(**kw), deadline=deadline, static_only=static_only)
