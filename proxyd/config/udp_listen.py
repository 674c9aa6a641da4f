"""What a UDP listener's `listen` endpoint (`udp:PORT[:interface=ADDRESS]`, normalised by
proxyd.config.endpoints.udp_endpoint) says: its port and interface. Shared by `[udp]` and
`[gslb]`, whose sockets proxyd binds itself."""

from __future__ import annotations


class UdpListen:
    """The port and interface of a frozen listener config's `listen`."""

    __slots__ = ()

    listen: str

    @property
    def port(self) -> int:
        return int(self.listen.split(":")[1])

    @property
    def interface(self) -> str:
        for option in self.listen.split(":", 2)[2:]:
            if option.startswith("interface="):
                return option[len("interface=") :]
        return ""
