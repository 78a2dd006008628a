"""Guest-wide configuration: modules, mounts, hostname, DNS, sysctls, clock."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable

from vmrt.agent import netlink
from vmrt.agent.errors import CommandFailed, InvalidArgument
from vmrt.agent.libc import LIBC
from vmrt.agent.modules import MODULE_GROUPS
from vmrt.agent.proctable import ProcessTable
from vmrt.agent.specfix import POD_DIR

log = logging.getLogger(__name__)

SIOCGIFFLAGS = 0x8913
# linux/random.h: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1
IFF_UP = 0x1
MODULE_DIR = "/lib/modules"
SHARE_MOUNT = "/run/vmrt/share"


CPU_DIR = "/sys/devices/system/cpu"


def cpu_list(text: str) -> set[int]:
    """The kernel's CPU list format: ``0-2,5``."""
    found: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            found.update(range(int(first), int(last or first) + 1))
    return found


def _read_cpus(name: str, root: str) -> set[int]:
    try:
        with open(os.path.join(root, name)) as f:
            return cpu_list(f.read())
    except OSError:
        return set()


def set_online_cpus(count: int, root: str = CPU_DIR) -> int:
    """The first ``count`` CPUs online and the others offline (CPU 0 always
    stays); returns how many are online."""
    present = sorted(_read_cpus("present", root))
    if not 1 <= count <= len(present):
        raise InvalidArgument(f"{count} CPUs: the guest has {len(present)}")
    for index, cpu in enumerate(present):
        if cpu == 0:
            continue
        with open(os.path.join(root, f"cpu{cpu}", "online"), "w") as f:
            f.write("1" if index < count else "0")
    return len(_read_cpus("online", root))


class Guest:
    def __init__(self, table: ProcessTable) -> None:
        self._table = table

    def run(self, argv: list[str]) -> None:
        code, output = self._table.run(argv, timeout=30.0)
        if code != 0:
            text = output.decode(errors="replace").strip()
            raise CommandFailed(f"{' '.join(argv)} failed (exit {code}): {text}")

    def mount(self, args: list[str]) -> None:
        if args[:1] == ["-u"]:
            self.run(["/bin/umount", *args[1:]])
        else:
            self.run(["/bin/mount", *args])

    def load_modules(self, group: str) -> None:
        for name in MODULE_GROUPS[group]:
            if os.path.exists(f"/sys/module/{name}"):
                continue
            path = os.path.join(MODULE_DIR, f"{name}.ko")
            if not os.path.exists(path):
                # Built into this kernel, or not in the image: the mount
                # that needs it will say which.
                continue
            self.run(["/bin/insmod", path])

    def mount_share(self, tag: str) -> None:
        if os.path.ismount(SHARE_MOUNT):
            return
        self.load_modules("9p")
        self.load_modules("overlay")
        os.makedirs(SHARE_MOUNT, exist_ok=True)
        # mount(2) itself: one process fewer on a clone's way to ready.
        _mount(tag, SHARE_MOUNT, "9p", "trans=virtio,version=9p2000.L,msize=512000,cache=mmap")

    @staticmethod
    def bring_up_loopback() -> None:
        link_up("lo")

    @staticmethod
    def set_hostname(hostname: str) -> None:
        """Set the guest's hostname and write the pod's hostname and hosts files."""
        hostname = hostname or socket.gethostname()
        if len(hostname) > 64 or "/" in hostname:
            raise InvalidArgument(f"invalid hostname {hostname!r}")
        socket.sethostname(hostname)
        for directory in ("/etc", POD_DIR):
            _write(os.path.join(directory, "hostname"), hostname + "\n")
            _write(os.path.join(directory, "hosts"), _hosts(hostname))

    @staticmethod
    def set_dns(servers: Iterable[str], searches: Iterable[str], options: Iterable[str]) -> None:
        lines = [f"nameserver {s}" for s in servers]
        searches = list(searches)
        if searches:
            lines.append("search " + " ".join(searches))
        options = list(options)
        if options:
            lines.append("options " + " ".join(options))
        for directory in ("/etc", POD_DIR):
            _write(os.path.join(directory, "resolv.conf"), "".join(line + "\n" for line in lines))

    @staticmethod
    def set_sysctls(sysctls: Iterable[tuple[str, str]]) -> None:
        for key, value in sysctls:
            if not key or ".." in key or key.startswith(("/", ".")):
                raise InvalidArgument(f"invalid sysctl name {key!r}")
            path = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                raise InvalidArgument(f"sysctl {key} does not exist in the guest kernel") from None
            except OSError as exc:
                raise InvalidArgument(f"sysctl {key}={value}: {exc.strerror}") from None

    def configure_network(self, interfaces: Iterable[tuple[str, str, int, list[str]]],
                          routes: Iterable[tuple[str, str, str]]) -> None:
        """Names, addresses, MTU and routes, as `ip` would set them (vmrt.agent.netlink)."""
        self.load_modules("net")
        renamed: dict[str, str] = {}
        for mac, name, mtu, addresses in interfaces:
            current = _interface_by_mac(mac)
            if name and name != current:
                _netlink(f"ip link set dev {current} name {name}", netlink.rename_link,
                         current, name)
                current = name
            renamed[name or current] = current
            if mtu:
                _ifreq_ioctl(SIOCSIFMTU, current, struct.pack("i20x", mtu))
            for address in addresses:
                _netlink(f"ip addr add {address} dev {current}", netlink.add_address,
                         current, address)
            link_up(current)
        for destination, gateway, device in routes:
            device = renamed.get(device, device)
            what = (f"ip route replace {destination}" + (f" via {gateway}" if gateway else "")
                    + (f" dev {device}" if device else ""))
            _netlink(what, netlink.replace_route, destination, gateway, device)

    @staticmethod
    def add_hosts_entries(addresses: Iterable[str]) -> None:
        """The pod's own IPs next to its hostname, as kubelet's hosts file has them."""
        hostname = socket.gethostname()
        lines = "".join(f"{address}\t{hostname}\n" for address in addresses)
        for directory in ("/etc", POD_DIR):
            path = os.path.join(directory, "hosts")
            with open(path, "a") as f:
                f.write(lines)

    @staticmethod
    def reseed(entropy: bytes) -> None:
        """Mix host entropy into the pool, credited, and reseed the CRNG now
        (a clone of a template would otherwise draw its siblings' numbers)."""
        if not 16 <= len(entropy) <= 512:
            raise InvalidArgument(f"entropy of {len(entropy)} bytes (16 to 512)")
        padded = entropy + bytes(-len(entropy) % 4)
        info = struct.pack("ii", len(entropy) * 8, len(entropy)) + padded
        fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, RNDADDENTROPY, info)
            fcntl.ioctl(fd, RNDRESEEDCRNG)
        finally:
            os.close(fd)

    @staticmethod
    def set_machine_id(sandbox_id: str) -> None:
        """/etc/machine-id from the sandbox id: one per pod, never a template's."""
        digits = "".join(c for c in sandbox_id.lower() if c in "0123456789abcdef")
        if len(digits) >= 32:
            _write("/etc/machine-id", digits[:32] + "\n")

    def set_mac(self, was: str, mac: str) -> None:
        if not _MAC.fullmatch(mac):
            raise InvalidArgument(f"invalid MAC address {mac!r}")
        self.load_modules("net")
        name = _interface_by_mac(was)
        address = bytes.fromhex(mac.replace(":", ""))
        _ifreq_ioctl(SIOCSIFHWADDR, name, struct.pack("H6s16x", ARPHRD_ETHER, address))

    @staticmethod
    def set_clock(host_time_ns: int) -> None:
        if host_time_ns > 0:
            time.clock_settime_ns(time.CLOCK_REALTIME, host_time_ns)


def _ifreq_ioctl(request: int, name: str, value: bytes) -> bytes:
    """An interface ioctl: ``struct ifreq`` is the name (16 bytes) and a
    24-byte union (``value``: flags, MTU or a sockaddr)."""
    if len(name.encode()) > 15 or len(value) != 24:
        raise InvalidArgument(f"invalid interface request for {name!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            return fcntl.ioctl(sock, request, struct.pack("16s", name.encode()) + value)
        except OSError as exc:
            raise CommandFailed(f"ioctl {request:#x} on {name}: {exc.strerror}") from None


def _netlink(what: str, request: Callable[..., None], *args: str) -> None:
    """One rtnetlink request, its failure said as the ``ip`` command it replaces."""
    try:
        request(*args)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    except OSError as exc:
        raise CommandFailed(f"{what} failed: {exc.strerror or exc}") from None


def link_up(name: str) -> None:
    """``ip link set NAME up`` without a process."""
    flags = struct.unpack("H22x", _ifreq_ioctl(SIOCGIFFLAGS, name, bytes(24))[16:])[0]
    _ifreq_ioctl(SIOCSIFFLAGS, name, struct.pack("H22x", flags | IFF_UP))


def _mount(source: str, target: str, fstype: str, options: str) -> None:
    if LIBC.mount(source.encode(), target.encode(), fstype.encode(), 0,
                   options.encode()) != 0:
        errno = ctypes.get_errno()
        raise CommandFailed(f"mount -t {fstype} {source} {target}: {os.strerror(errno)}")


def _hosts(hostname: str) -> str:
    return ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n")


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _interface_by_mac(mac: str, sys_net: str = "/sys/class/net") -> str:
    for name in sorted(os.listdir(sys_net)):
        try:
            with open(os.path.join(sys_net, name, "address")) as f:
                if f.read().strip().lower() == mac.lower():
                    return name
        except OSError:
            continue
    raise InvalidArgument(f"no network interface with MAC {mac} in the VM")
