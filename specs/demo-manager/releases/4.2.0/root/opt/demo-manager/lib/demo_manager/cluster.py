"""Cluster peers, 4.1+ format: http://host:port?role=ROLE, comma separated."""

from urllib.parse import parse_qs, urlsplit


def parse_endpoints(text):
    peers = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        url = urlsplit(item)
        if url.scheme != "http":
            raise SystemExit(f"demo-manager: endpoint {item!r} is not http://host:port?role=ROLE")
        role = parse_qs(url.query).get("role", ["peer"])[0]
        peers.append({"address": url.netloc, "role": role})
    return peers
