"""Large fleets: identical hosts and cards make thousands of equivalent candidates. Offer each service a few
hosts of each kind of machine and keep a few candidates per kind of placement; the plan then says it is not proven
optimal."""

from __future__ import annotations

from collections.abc import Sequence

from gpumix.hardware.spec import Device
from gpumix.plan.assign import Choice
from gpumix.plan.candidates import Option
from gpumix.plan.fleet import DeviceClass, device_class

HostClass = tuple[DeviceClass, ...]  # the sorted device classes of one host: identical machines plan alike

MAX_CHOICES = 4000  # above this many fitting candidates they are pruned
PRUNED_PER_CLASS = 3  # hosts kept per service and kind of placement
MAX_HOSTS_PER_SERVICE = 8  # above this many hosts each service sees HOSTS_PER_CLASS hosts of each machine kind
HOSTS_PER_CLASS = 2
SINGLES_PER_CLASS = 2  # one-card candidates per identical card type per host


def host_classes(devs: Sequence[Device]) -> dict[HostClass, list[str | None]]:
    """Hosts grouped by their set of device classes (identical machines plan alike)."""
    by_host: dict[str | None, list[DeviceClass]] = {}
    for d in devs:
        by_host.setdefault(d.host, []).append(device_class(d))
    classes: dict[HostClass, list[str | None]] = {}
    for host, members in by_host.items():
        classes.setdefault(tuple(sorted(members, key=repr)), []).append(host)
    return classes


def too_many_hosts(classes: dict[HostClass, list[str | None]]) -> bool:
    return sum(len(hosts) for hosts in classes.values()) > MAX_HOSTS_PER_SERVICE


def candidate_devices(devs: Sequence[Device], classes: dict[HostClass, list[str | None]], service: int) -> list[Device]:
    """A service is offered HOSTS_PER_CLASS hosts of each kind of machine, rotated by service so that services
    spread over the fleet."""
    chosen: set[str | None] = set()
    for hosts in classes.values():
        for k in range(min(HOSTS_PER_CLASS, len(hosts))):
            chosen.add(hosts[(service * HOSTS_PER_CLASS + k) % len(hosts)])
    return [d for d in devs if d.host in chosen]


def prune_choices(choices: list[Choice], option_of: list[Option]) -> tuple[list[Choice], list[Option]]:
    """Keep, per service and per kind of placement (mode + card types), PRUNED_PER_CLASS candidates on different
    hosts — rotated by service so that services sharing a card type are offered different hosts."""
    groups: dict[tuple[int, str, tuple[DeviceClass, ...], tuple[int, ...], tuple[int, ...], str | None], list[int]] = {}
    for j, (c, opt) in enumerate(zip(choices, option_of, strict=True)):
        signature = (c.service, opt.mode, tuple(device_class(d) for d in opt.devices), opt.layers, opt.kv_tokens,
                     opt.memory_setting)  # fmt: skip
        groups.setdefault(signature, []).append(j)
    keep: list[int] = []
    for (service, *_), js in groups.items():
        hosts = sorted({option_of[j].devices[0].host or "" for j in js})
        rank = {h: (i - service) % len(hosts) for i, h in enumerate(hosts)}
        js.sort(key=lambda j: (rank[option_of[j].devices[0].host or ""], option_of[j].devices[0].index))
        per_host: dict[str, int] = {}
        for j in js:
            host = option_of[j].devices[0].host or ""
            if per_host.get(host, 0) < 2 and len(per_host) <= PRUNED_PER_CLASS:
                per_host[host] = per_host.get(host, 0) + 1
                keep.append(j)
    keep.sort()
    return [choices[j] for j in keep], [option_of[j] for j in keep]
