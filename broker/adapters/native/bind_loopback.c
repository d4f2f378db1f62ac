/*
 * bind_loopback: an LD_PRELOAD shim that keeps a process tree's listening sockets on loopback.
 *
 * Why: Ray 2.x starts its gRPC servers (gcs_server, raylet, core workers, dashboard agent) on
 * all interfaces ("0.0.0.0" / "[::]") whatever --node-ip-address says, and has no setting to
 * change that. The broker's embedded one-machine Ray head must not be reachable from the
 * network (ARCHITECTURE: Ray stays behind the broker), so `broker up` starts the head with this
 * library preloaded: every bind() of an IPv4/IPv6 socket to a non-loopback address is rewritten
 * to the loopback address of the same family, keeping the port. Dual-stack IPv6 sockets
 * (IPV6_V6ONLY off, how gRPC listens on "0.0.0.0") are bound to ::ffff:127.0.0.1 so IPv4
 * clients on 127.0.0.1 still reach them; IPv6-only sockets go to ::1.
 *
 * Only bind() is touched: outgoing connections, Unix sockets and other families are unchanged.
 * Set BIND_LOOPBACK_LOG=1 to log each rewrite to stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static void log_rewrite(int fd, int family, unsigned port) {
    const char *flag = getenv("BIND_LOOPBACK_LOG");
    if (flag && flag[0] == '1')
        fprintf(stderr, "bind_loopback: fd %d family %d port %u -> loopback\n", fd, family, port);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind)
        real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if ((ntohl(a.sin_addr.s_addr) >> 24) != 127) {
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            log_rewrite(fd, AF_INET, ntohs(a.sin_port));
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        int mapped = IN6_IS_ADDR_V4MAPPED(&a.sin6_addr);
        int loop = IN6_IS_ADDR_LOOPBACK(&a.sin6_addr) ||
                   (mapped && a.sin6_addr.s6_addr[12] == 127);
        if (!loop) {
            int v6only = 0;
            socklen_t optlen = sizeof v6only;
            if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) != 0)
                v6only = 0;
            if (v6only) {
                a.sin6_addr = in6addr_loopback;
            } else {
                memset(&a.sin6_addr, 0, sizeof a.sin6_addr);
                a.sin6_addr.s6_addr[10] = 0xff;
                a.sin6_addr.s6_addr[11] = 0xff;
                a.sin6_addr.s6_addr[12] = 127;
                a.sin6_addr.s6_addr[15] = 1;
            }
            log_rewrite(fd, AF_INET6, ntohs(a.sin6_port));
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    return real_bind(fd, addr, len);
}
