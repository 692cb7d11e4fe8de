"""Cluster peers, 3.x/4.0 format: tcp://host:port, comma separated."""


def parse_endpoints(text):
    peers = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        if not item.startswith("tcp://"):
            raise SystemExit(f"demo-manager: endpoint {item!r} is not tcp://host:port")
        peers.append({"address": item[len("tcp://"):], "role": "member"})
    return peers
