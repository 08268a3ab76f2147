"""The names gpumix gives Ray: the host label, one custom resource per device, the actor namespace.

Pure (no Ray import): the planner's side (device ids) and the cluster's side (labels, resources) meet here.

- Every Ray node started by `gpumix cluster join --host NAME` carries the label ``gpumix.io/host=NAME``.
- Every device of that host is one custom resource of capacity 1, named after its plan-wide device id
  (``gpumix.io/dev/<host>/gpu0``, ``gpumix.io/dev/<host>/cpu0``): an actor that asks for it can only land on
  that host, and the card's one unit can be claimed once (parts of one plan that share a card split it).
"""

from __future__ import annotations

import ipaddress
import re

from gpumix.errors import GpumixError

HOST_LABEL = "gpumix.io/host"
DEVICE_RESOURCE_PREFIX = "gpumix.io/dev/"
AGENT_NAMESPACE = "gpumix"
CPU_DEVICE = "cpu0"  # every host offers its CPU as one device (a CPU-only host has only this one)

# Ray's label value rule (ray/_private/label_utils.py LABEL_REGEX, 63 chars at most): host names used on a
# cluster must satisfy it, since they become label values and resource-name parts.
_LABEL_VALUE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?")
_LOCAL_DEVICE = re.compile(r"(gpu|cpu)[0-9]{1,3}")


def check_host_name(name: str) -> str:
    """A plan host name usable as a Ray node label value; GpumixError otherwise."""
    if not _LABEL_VALUE.fullmatch(name):
        raise GpumixError(
            f"host name {name!r} cannot name a Ray node",
            hint="use 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit "
            "(the same name as the plan file's `host:`)",
        )
    return name


def device_id(host: str, local_id: str) -> str:
    """Plan-wide device id of a host's device: 'a/gpu0', 'b/cpu0' (the foundation's PlannedDevice.id)."""
    if not _LOCAL_DEVICE.fullmatch(local_id):
        raise GpumixError(f"device {local_id!r} of host {host!r} is not gpuN or cpuN")
    return f"{check_host_name(host)}/{local_id}"


def device_resource(plan_device_id: str) -> str:
    """The Ray custom resource that stands for one device: 'a/gpu0' -> 'gpumix.io/dev/a/gpu0'."""
    host, _, local = plan_device_id.partition("/")
    if not local:
        raise GpumixError(
            f"device id {plan_device_id!r} names no host",
            hint="on a cluster every device belongs to a host: ids look like 'a/gpu0'",
        )
    return DEVICE_RESOURCE_PREFIX + device_id(host, local)


def devices_of(resources: dict[str, float]) -> list[str]:
    """Plan-wide device ids among a node's resources, sorted (cpu0 before gpu0, gpu2 before gpu10)."""
    ids = [name.removeprefix(DEVICE_RESOURCE_PREFIX) for name in resources if name.startswith(DEVICE_RESOURCE_PREFIX)]
    return sorted(ids, key=_device_sort_key)


def _device_sort_key(plan_device_id: str) -> tuple[str, str, int]:
    host, _, local = plan_device_id.partition("/")
    kind, number = local[:3], local[3:]
    return host, kind, int(number) if number.isdigit() else 0


def check_node_ip(ip: str) -> str:
    """An address Ray and the engines may bind: a concrete IPv4/IPv6 address, never a wildcard."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise GpumixError(f"{ip!r} is not an IP address", hint="pass this machine's address on the cluster network") from None
    if address.is_unspecified:
        raise GpumixError(
            f"refusing to use {ip}: it would listen on every interface",
            hint="pass the one address of this machine that the other hosts reach (e.g. its LAN or VPN address)",
        )
    return str(address)


def check_ray_node_ip(ip: str) -> str:
    """A node address `ray start` keeps as given: it replaces 127.0.0.1 (and localhost) with the machine's
    routable address (ray/_private/services.py resolve_ip_for_localhost), which would put Ray on the LAN."""
    ip = check_node_ip(ip)
    if ip in ("127.0.0.1", "::1"):
        raise GpumixError(
            f"Ray does not keep {ip} as a node address: it would advertise this machine's LAN address instead",
            hint="pass the address the other hosts reach; for a one-machine test use `gpumix cluster local`",
        )
    return ip


def agent_actor_name(deployment: str, part: str) -> str:
    """Ray actor name of one part of a deployment (unique in the gpumix namespace)."""
    return f"{deployment}.{part}"
