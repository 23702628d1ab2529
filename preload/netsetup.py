"""Devices and addresses for an instance group, through the kernel's own
interfaces: the tun driver's ioctls for the TAP device, netlink (pyroute2)
for addresses and link state.  Nothing here parses the output of ``ip``."""
import fcntl
import os
import socket
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100


class SetupError(Exception):
    """A device or address could not be set up; the message says what to do."""


def IPRoute():
    """pyroute2's netlink socket, imported when first needed: the commands
    that never touch a device (--help, status, stat...) run without it."""
    try:
        from pyroute2 import IPRoute as ipr
    except ImportError:
        raise SetupError("the Python package pyroute2 is missing (devices and addresses are set up through it): "
                         "pip install pyroute2, or apt-get install python3-pyroute2")
    return ipr()


def kernel_addresses():
    """The kernel's IPv4 addresses: [(interface, address, prefixlen)]."""
    with IPRoute() as ip:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ip.get_links()}
        return [(names.get(a["index"], "?"), a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ip.get_addr(family=socket.AF_INET)]


def kernel_routes():
    """The main table's IPv4 routes but the default: [(interface, "net/len")]."""
    with IPRoute() as ip:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ip.get_links()}
        return [(names.get(r.get_attr("RTA_OIF"), "?"), "%s/%d" % (r.get_attr("RTA_DST"), r["dst_len"]))
                for r in ip.get_routes(family=socket.AF_INET, table=254) if r["dst_len"] > 0]


def link_index(name):
    with IPRoute() as ip:
        found = ip.link_lookup(ifname=name)
    return found[0] if found else None


def create_tap(name):
    """A persistent multi-queue TAP device; instances attach its queues."""
    if link_index(name) is not None:
        raise SetupError("interface %s already exists; choose another with --interface, or remove it" % name)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as e:
        raise SetupError("cannot open /dev/net/tun (%s): the tap backend needs the tun driver and root" % e.strerror)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as e:
        raise SetupError("cannot create tap device %s (%s); run as root" % (name, e.strerror))
    finally:
        os.close(fd)


def configure_host_side(name, address, prefixlen):
    """Gives the kernel side of the device the host's address and brings it
    up; returns the device's MAC (the stack's next hop toward the host)."""
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=name)[0]
        ip.addr("add", index=idx, address=address, prefixlen=prefixlen)
        ip.link("set", index=idx, state="up")
        return ip.get_links(idx)[0].get_attr("IFLA_ADDRESS")


def delete_link(name):
    idx = link_index(name)
    if idx is not None:
        with IPRoute() as ip:
            ip.link("del", index=idx)
