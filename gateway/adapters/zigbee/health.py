"""Zigbee network health: the network map from zigpy's topology, channel advice from an
energy scan. Plain functions over what zigpy returns; the adapter runs the scans."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

ALL_CHANNELS = list(range(11, 27))
#: channels the Zigbee Light Link and Zigbee/Wi-Fi coexistence guidance prefer
PREFERRED = (15, 20, 25, 11)


def zigbee_mhz(channel: int) -> int:
    """Centre frequency of a 2.4 GHz Zigbee channel (11-26)."""
    return 2405 + 5 * (channel - 11)


def wifi_overlap(channel: int) -> list[int]:
    """The 2.4 GHz Wi-Fi channels (20 MHz wide, 1-13) that overlap a Zigbee channel."""
    centre = zigbee_mhz(channel)
    # a Wi-Fi channel spans ±10 MHz of its centre, a Zigbee channel ±1 MHz
    return [w for w in range(1, 14) if abs(centre - (2407 + 5 * w)) < 11]


def parse_channels(text: str) -> list[int]:
    """``11-26``, ``15,20,25`` or ``11-14,20`` as a sorted list of Zigbee channels."""
    channels: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"channels: {part!r} is not a channel or a range like 11-26"
                             ) from None
        if not 11 <= first <= last <= 26:
            raise ValueError(f"channels: {part!r} is outside 11-26")
        channels.update(range(first, last + 1))
    if not channels:
        raise ValueError("channels: none given (expected e.g. 11-26 or 15,20,25)")
    return sorted(channels)


def channel_mask(channels: Iterable[int]) -> Any:
    """zigpy's channel bitmap for a list of channels."""
    import zigpy.types as t

    # zigpy declares from_channel_list a classmethod in a way mypy cannot follow
    return t.Channels.from_channel_list(list(channels))  # type: ignore[misc]


def recommend(energy: dict[int, float], current: int | None) -> dict[str, Any]:
    """The quietest scanned channel by zigpy's own choice (which weighs neighbouring
    channels and prefers 15, 20, 25, then 11 when levels are close), and why."""
    import zigpy.util

    scanned = sorted(energy)

    def nearest(channel: int) -> float:
        return energy[min(scanned, key=lambda s: (abs(s - channel), s))]

    # zigpy's pick wants every channel: an unscanned one counts as loud as its nearest
    # scanned neighbour, so a partial scan is judged on what was measured
    full = {c: nearest(c) for c in ALL_CHANNELS}
    best = int(zigpy.util.pick_optimal_channel(full, channels=channel_mask(scanned)))
    quietest = min(scanned, key=lambda c: (energy[c], c))
    if energy[best] <= energy[quietest]:
        reason = f"channel {best} is the quietest"
    elif best in PREFERRED:
        reason = (f"channel {best} ({energy[best]:.0f}) is close to the quietest, {quietest}"
                  f" ({energy[quietest]:.0f}), and is one of"
                  f" {', '.join(map(str, PREFERRED))}, which Zigbee devices and Wi-Fi"
                  " coexistence favour")
    else:
        reason = (f"channel {best} ({energy[best]:.0f}) is close to the quietest, {quietest}"
                  f" ({energy[quietest]:.0f}), whose neighbouring channels are busier")
    advice: dict[str, Any] = {"channel": best, "energy": energy[best],
                              "wifi_overlap": wifi_overlap(best), "reason": reason}
    if current is not None:
        advice["current"] = current
        advice["current_energy"] = energy.get(current)
        advice["change"] = best != current
    return advice


def scan_report(energy: dict[int, float], current: int | None) -> dict[str, Any]:
    """What ``POST /api/zigbee/scan`` answers: energy per channel and the advice."""
    rows = [{"channel": c, "energy": round(float(e), 1), "mhz": zigbee_mhz(c),
             "wifi_overlap": wifi_overlap(c)} for c, e in sorted(energy.items())]
    return {"channels": rows, "recommendation": recommend(
        {c: float(e) for c, e in energy.items()}, current)}


def _kind(desc: Any, fallback: str) -> str:
    if desc is None:
        return fallback
    if desc.is_coordinator:
        return "coordinator"
    return "router" if desc.is_router else "end_device"


def _name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name if name is not None else value).lower()


def network_map(app: Any, device_id: Callable[[Any], str | None],
                scanned_at: float | None) -> dict[str, Any]:
    """Nodes and links from zigpy's last topology scan (``app.topology``), as JSON."""
    coordinator = app.state.node_info.ieee
    nodes: dict[str, dict[str, Any]] = {}
    for dev in app.devices.values():
        ieee = str(dev.ieee)
        nodes[ieee] = {"ieee": ieee, "nwk": f"0x{int(dev.nwk):04X}",
                       "device": None if dev.ieee == coordinator else device_id(dev),
                       "type": ("coordinator" if dev.ieee == coordinator
                                else _kind(getattr(dev, "node_desc", None), "unknown")),
                       "lqi": getattr(dev, "lqi", None), "model": getattr(dev, "model", None)}
    links: list[dict[str, Any]] = []
    by_nwk = {n["nwk"]: n["ieee"] for n in nodes.values()}
    for ieee, neighbors in _items(app.topology.neighbors):
        for nb in neighbors:
            other = str(nb.ieee)
            if other not in nodes:
                nodes[other] = {"ieee": other, "nwk": f"0x{int(nb.nwk):04X}", "device": None,
                                "type": {"coordinator": "coordinator", "router": "router",
                                         "enddevice": "end_device"}.get(
                                             _name(nb.device_type), "unknown"),
                                "lqi": None, "model": None}
            links.append({"from": str(ieee), "to": other, "lqi": int(nb.lqi),
                          "relationship": _name(nb.relationship), "depth": int(nb.depth)})
    routes = [{"from": str(ieee), "to": by_nwk.get(f"0x{int(r.DstNWK):04X}"),
               "to_nwk": f"0x{int(r.DstNWK):04X}",
               "next_hop": by_nwk.get(f"0x{int(r.NextHop):04X}"),
               "next_hop_nwk": f"0x{int(r.NextHop):04X}", "status": _name(r.RouteStatus)}
              for ieee, table in _items(app.topology.routes) for r in table]
    return {"scanned_at": scanned_at, "nodes": sorted(nodes.values(), key=_node_order),
            "links": links, "routes": routes}


def _items(table: Any) -> Iterable[tuple[Any, list[Any]]]:
    return sorted(table.items(), key=lambda kv: str(kv[0]))


def _node_order(node: dict[str, Any]) -> tuple[int, str]:
    rank = {"coordinator": 0, "router": 1, "end_device": 2}.get(node["type"], 3)
    return rank, node["ieee"]
