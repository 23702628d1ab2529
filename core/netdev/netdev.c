/* The backends' registry, and what more than one backend needs. */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <string.h>

#include "netdev.h"

const struct ss_netdev_ops *ss_netdev_find(const char *name)
{
    static const struct ss_netdev_ops *const all[] = {&ss_netdev_tap, &ss_netdev_afpacket, &ss_netdev_afxdp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(all[i]->name, name) == 0)
            return all[i];
    return NULL;
}

/* Whether the kernel holds the stack's address on the interface: backends
 * that share an interface with the kernel refuse it, or both would answer. */
int ss_netdev_kernel_holds(const char *ifname, uint32_t ip)
{
    struct ifaddrs *all, *a;
    int found = 0;
    if (getifaddrs(&all) < 0)
        return 0;
    for (a = all; a; a = a->ifa_next)
        if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET && strcmp(a->ifa_name, ifname) == 0 &&
            ntohl(((struct sockaddr_in *)a->ifa_addr)->sin_addr.s_addr) == ip)
            found = 1;
    freeifaddrs(all);
    return found;
}
