/*
 * bind_loopback: an LD_PRELOAD shim that keeps a process tree's listening sockets on loopback.
 *
 * Why: Ray 2.x starts its gRPC servers (gcs_server, raylet, core workers, dashboard agent) on
 * all interfaces ("0.0.0.0" / "[::]") whatever --node-ip-address says, and has no setting to
 * change that. The broker's embedded one-machine Ray head must not be reachable from the
 * network (ARCHITECTURE: Ray stays behind the broker), so `broker up` starts the head with this
 * library preloaded:
 * - bind() of an IPv4/IPv6 socket to a non-loopback address is rewritten to the loopback
 *   address of the same family, keeping the port. Dual-stack IPv6 sockets (IPV6_V6ONLY off,
 *   how gRPC listens on "0.0.0.0") are bound to ::ffff:127.0.0.1 so IPv4 clients on 127.0.0.1
 *   still reach them; IPv6-only sockets go to ::1.
 * - listen() on a socket that was never bound (the kernel would pick the wildcard address
 *   and an ephemeral port) first binds it to loopback with port 0.
 * Outgoing connections, Unix sockets and other families are unchanged. Where the real
 * functions cannot be found the calls fail with ENOSYS rather than fall through unguarded.
 * Set BIND_LOOPBACK_LOG=1 to log each rewrite to stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);

static bind_fn real_bind;
static listen_fn real_listen;

__attribute__((constructor)) static void init(void) {
    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    real_listen = (listen_fn)dlsym(RTLD_NEXT, "listen");
}

static void log_rewrite(const char *what, int fd, int family, unsigned port) {
    const char *flag = getenv("BIND_LOOPBACK_LOG");
    if (flag && flag[0] == '1')
        fprintf(stderr, "bind_loopback: %s fd %d family %d port %u -> loopback\n", what, fd, family, port);
}

static void loopback6(int fd, struct sockaddr_in6 *a) {
    int v6only = 0;
    socklen_t optlen = sizeof v6only;
    if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) != 0)
        v6only = 0;
    if (v6only) {
        a->sin6_addr = in6addr_loopback;
    } else {  /* ::ffff:127.0.0.1 */
        memset(&a->sin6_addr, 0, sizeof a->sin6_addr);
        a->sin6_addr.s6_addr[10] = 0xff;
        a->sin6_addr.s6_addr[11] = 0xff;
        a->sin6_addr.s6_addr[12] = 127;
        a->sin6_addr.s6_addr[15] = 1;
    }
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    if (!real_bind) {
        errno = ENOSYS;
        return -1;
    }
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if ((ntohl(a.sin_addr.s_addr) >> 24) != 127) {
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            log_rewrite("bind", fd, AF_INET, ntohs(a.sin_port));
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        int mapped = IN6_IS_ADDR_V4MAPPED(&a.sin6_addr);
        int loop = IN6_IS_ADDR_LOOPBACK(&a.sin6_addr) || (mapped && a.sin6_addr.s6_addr[12] == 127);
        if (!loop) {
            loopback6(fd, &a);
            log_rewrite("bind", fd, AF_INET6, ntohs(a.sin6_port));
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    return real_bind(fd, addr, len);
}

int listen(int fd, int backlog) {
    if (!real_listen || !real_bind) {
        errno = ENOSYS;
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            if (a->sin_port == 0 && a->sin_addr.s_addr == htonl(INADDR_ANY)) {  /* never bound */
                a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                log_rewrite("listen", fd, AF_INET, 0);
                if (real_bind(fd, (const struct sockaddr *)a, sizeof *a) != 0)
                    return -1;
            }
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            if (a->sin6_port == 0 && IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) {  /* never bound */
                loopback6(fd, a);
                log_rewrite("listen", fd, AF_INET6, 0);
                if (real_bind(fd, (const struct sockaddr *)a, sizeof *a) != 0)
                    return -1;
            }
        }
    }
    return real_listen(fd, backlog);
}
