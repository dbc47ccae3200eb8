"""What the endpoint tests share: a free loopback port, and the check of a 422 answer."""

from __future__ import annotations

import socket

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_422_names(r: requests.Response, field: str | None, message: str) -> None:
    """``r`` is a 422 whose ``detail`` names ``body.field`` (``body`` alone when None) with ``message``."""
    assert r.status_code == 422, r.text
    loc = ["body", field] if field else ["body"]
    assert any(d["loc"][:len(loc)] == loc and message in d["msg"] for d in r.json()["detail"]), r.text
