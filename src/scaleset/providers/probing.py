"""Load-balancer health probes, run by the control plane against an instance's address.

Azure's rules for a probe (azure-api.md §2.1, the load balancer's `probes`): Http and Https are healthy on
a 200 answer to a GET of `requestPath`; Tcp is healthy when the three-way handshake succeeds. Anything
else — a refused connection, a timeout, another status — is unhealthy. Https probes do not check the
certificate, as a load balancer does not.
"""

from __future__ import annotations

import socket

import httpx

from scaleset.providers.base import HealthProbe


def probe_address(address: str, probe: HealthProbe) -> bool:
    if probe.protocol.lower() == "tcp":
        try:
            with socket.create_connection((address, probe.port), timeout=probe.timeout_seconds):
                return True
        except OSError:
            return False
    scheme = "https" if probe.protocol.lower() == "https" else "http"
    path = probe.request_path or "/"
    url = f"{scheme}://{address}:{probe.port}{path if path.startswith('/') else '/' + path}"
    try:
        # A host-wide HTTP_PROXY must not carry probes of loopback instances: trust_env=False.
        response = httpx.get(
            url, timeout=probe.timeout_seconds, verify=False, follow_redirects=False, trust_env=False
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200
