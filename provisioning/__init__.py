"""Fleet's EST enrollment service (RFC 7030) on aiohttp: wire format, HTTP auth, limits.

Entry points live in ``provisioning.server``: ``start`` (in a running event loop) and ``serve``
(blocking, one or more worker processes).
"""
