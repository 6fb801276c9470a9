/*
 * prov-hwtool: the two facts of the inspection ramdisk that busybox cannot read.
 *
 *   prov-hwtool lldp SECONDS IFACE...   listen for one LLDP frame (IEEE 802.1AB,
 *       ethertype 0x88cc, to 01:80:c2:00:00:0e) on each IFACE for at most SECONDS
 *       in all; prints one line per interface heard:
 *         IFACE<TAB>CHASSIS_ID<TAB>PORT_ID<TAB>SYSTEM_NAME
 *       MAC subtypes as aa:bb:.., IPv4 network addresses dotted, anything else
 *       as its bytes with non-printable characters (and TAB) as '?'.
 *   prov-hwtool ipmi-lan [DEVICE]       the BMC's LAN address and MAC through the
 *       in-band IPMI interface (/dev/ipmi0: ipmi_si + ipmi_devintf), Get LAN
 *       Configuration Parameters (IPMI 2.0 s.23.2, params 3 and 5) on channels
 *       1..11; prints "ADDRESS<TAB>MAC" of the first channel answering, exit 1 when
 *       there is no device or no LAN channel.
 *
 * A tiny static receiver instead of Debian's lldpd: lldpd links net-snmp, perl,
 * OpenSSL and Kerberos (lldpcli: libxml2 and ICU), tens of MB in the initramfs.
 * Built by build-ramdisk.sh with `cc -static -Os`; standard C + Linux headers only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/ipmi.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETH_P_LLDP_ 0x88cc
#define MAX_IFACES 32

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* TLV value -> printable text in out (size n). kind: 'c' chassis, 'p' port, 's' string. */
static void render(const unsigned char *v, int len, char kind, char *out, size_t n) {
    out[0] = '\0';
    if (len <= 0) return;
    int subtype = kind == 's' ? -1 : v[0];
    const unsigned char *d = kind == 's' ? v : v + 1;
    int dl = kind == 's' ? len : len - 1;
    /* MAC address: chassis subtype 4, port subtype 3 */
    if (((kind == 'c' && subtype == 4) || (kind == 'p' && subtype == 3)) && dl == 6) {
        snprintf(out, n, "%02x:%02x:%02x:%02x:%02x:%02x", d[0], d[1], d[2], d[3], d[4], d[5]);
        return;
    }
    /* Network address: chassis subtype 5, port subtype 4; first byte the IANA family (1 = IPv4) */
    if (((kind == 'c' && subtype == 5) || (kind == 'p' && subtype == 4)) && dl == 5 && d[0] == 1) {
        snprintf(out, n, "%u.%u.%u.%u", d[1], d[2], d[3], d[4]);
        return;
    }
    size_t j = 0;
    for (int i = 0; i < dl && j + 1 < n; i++) out[j++] = (d[i] >= 0x20 && d[i] < 0x7f) ? (char)d[i] : '?';
    out[j] = '\0';
}

/* Parse one LLDPDU; 1 when it had a chassis id and a port id. */
static int parse_lldp(const unsigned char *p, int len, char *chassis, char *port, char *sysname, size_t n) {
    int have = 0;
    sysname[0] = '\0';
    while (len >= 2) {
        int type = p[0] >> 1, tl = ((p[0] & 1) << 8) | p[1];
        p += 2;
        len -= 2;
        if (tl > len) return 0;
        if (type == 0) break; /* End of LLDPDU */
        if (type == 1) { render(p, tl, 'c', chassis, n); have |= 1; }
        if (type == 2) { render(p, tl, 'p', port, n); have |= 2; }
        if (type == 5) render(p, tl, 's', sysname, n);
        p += tl;
        len -= tl;
    }
    return have == 3;
}

static int lldp(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: prov-hwtool lldp SECONDS IFACE...\n"); return 2; }
    double deadline = now() + atof(argv[0]);
    int nif = argc - 1 > MAX_IFACES ? MAX_IFACES : argc - 1;
    int idx[MAX_IFACES], heard[MAX_IFACES] = {0}, left = 0;
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_LLDP_));
    if (fd < 0) { perror("socket"); return 1; }
    static const unsigned char group[6] = {0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e};
    for (int i = 0; i < nif; i++) {
        idx[i] = (int)if_nametoindex(argv[i + 1]);
        if (!idx[i]) { heard[i] = 1; continue; }
        /* The NIC filters multicast: join the LLDP nearest-bridge group on it. */
        struct packet_mreq mr = {0};
        mr.mr_ifindex = idx[i];
        mr.mr_type = PACKET_MR_MULTICAST;
        mr.mr_alen = 6;
        memcpy(mr.mr_address, group, 6);
        setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr);
        left++;
    }
    unsigned char buf[2048];
    char chassis[256], port[256], sysname[256];
    while (left > 0) {
        double rem = deadline - now();
        if (rem <= 0) break;
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, (int)(rem * 1000) + 1) <= 0) continue;
        struct sockaddr_ll from;
        socklen_t fl = sizeof from;
        ssize_t got = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (got < 14 || from.sll_pkttype == PACKET_OUTGOING) continue;
        for (int i = 0; i < nif; i++) {
            if (heard[i] || idx[i] != from.sll_ifindex) continue;
            /* SOCK_RAW: the Ethernet header is in the buffer */
            if (parse_lldp(buf + 14, (int)got - 14, chassis, port, sysname, sizeof chassis)) {
                printf("%s\t%s\t%s\t%s\n", argv[i + 1], chassis, port, sysname);
                fflush(stdout);
                heard[i] = 1;
                left--;
            }
        }
    }
    close(fd);
    return 0;
}

/* One IPMI request to the BMC; response data (completion code first) in rsp, its length returned, -1 on error. */
static int ipmi_cmd(int fd, unsigned char netfn, unsigned char cmd, unsigned char *data, int dlen,
                    unsigned char *rsp, int rlen) {
    static long msgid = 1;
    struct ipmi_system_interface_addr si = {IPMI_SYSTEM_INTERFACE_ADDR_TYPE, IPMI_BMC_CHANNEL, 0};
    struct ipmi_req req = {0};
    req.addr = (unsigned char *)&si;
    req.addr_len = sizeof si;
    req.msgid = msgid++;
    req.msg.netfn = netfn;
    req.msg.cmd = cmd;
    req.msg.data = data;
    req.msg.data_len = (unsigned short)dlen;
    if (ioctl(fd, IPMICTL_SEND_COMMAND, &req) < 0) return -1;
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 3000) <= 0) return -1;
    struct ipmi_addr addr;
    struct ipmi_recv rcv = {0};
    rcv.addr = (unsigned char *)&addr;
    rcv.addr_len = sizeof addr;
    rcv.msg.data = rsp;
    rcv.msg.data_len = (unsigned short)rlen;
    if (ioctl(fd, IPMICTL_RECEIVE_MSG_TRUNC, &rcv) < 0 && errno != EMSGSIZE) return -1;
    return rcv.msg.data_len;
}

static int ipmi_lan(int argc, char **argv) {
    const char *dev = argc > 0 ? argv[0] : "/dev/ipmi0";
    int fd = open(dev, O_RDWR);
    if (fd < 0) return 1;
    unsigned char rsp[64];
    for (unsigned char ch = 1; ch <= 11; ch++) {
        unsigned char ip_req[4] = {ch, 3, 0, 0}, mac_req[4] = {ch, 5, 0, 0};
        int n = ipmi_cmd(fd, 0x0c, 0x02, ip_req, 4, rsp, sizeof rsp);
        if (n < 6 || rsp[0] != 0) continue;
        char ip[16];
        snprintf(ip, sizeof ip, "%u.%u.%u.%u", rsp[2], rsp[3], rsp[4], rsp[5]);
        n = ipmi_cmd(fd, 0x0c, 0x02, mac_req, 4, rsp, sizeof rsp);
        if (n < 8 || rsp[0] != 0) continue;
        printf("%s\t%02x:%02x:%02x:%02x:%02x:%02x\n", ip, rsp[2], rsp[3], rsp[4], rsp[5], rsp[6], rsp[7]);
        close(fd);
        return 0;
    }
    close(fd);
    return 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "lldp") == 0) return lldp(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "ipmi-lan") == 0) return ipmi_lan(argc - 2, argv + 2);
    fprintf(stderr, "usage: prov-hwtool lldp SECONDS IFACE... | ipmi-lan [DEVICE]\n");
    return 2;
}
