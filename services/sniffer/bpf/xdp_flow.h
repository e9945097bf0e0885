/* Shared by the XDP program (xdp_flow.c) and user space (services/sniffer/libbpf.py mirrors it with
 * ctypes; tests/unit/test_xdp_layout.py checks the two against the object's BTF).
 *
 * Only fixed-width types and explicit padding, so the layout is the same for clang -target bpf and
 * for x86_64 ctypes. Times are bpf_ktime_get_ns() (CLOCK_MONOTONIC); user space maps them to the
 * wall clock. Sizes are the IP-layer packet size from the IP header (IPv4 total length, IPv6 40 +
 * payload length), as services/sniffer/decode.py counts them.
 */
#ifndef MLD_XDP_FLOW_H
#define MLD_XDP_FLOW_H

#define MLD_DIR_SRC2DST 0
#define MLD_DIR_DST2SRC 1

/* Flow-table notices on the ring buffer. START: a new entry (key only). TERM: TCP FIN both ways or
 * RST seen (key only); the flow is exported once tcp_close_linger has passed. END: a flow ended by
 * the next packet (idle gap, linger over or a new SYN, active timeout), with its final counters. */
#define MLD_EVENT_START 1
#define MLD_EVENT_END 2
#define MLD_EVENT_TERM 3

/* End reasons (numbers of ml_defender.v1.EndReason). */
#define MLD_END_NONE 0
#define MLD_END_IDLE 1
#define MLD_END_ACTIVE 2
#define MLD_END_FIN 3
#define MLD_END_RST 4

/* Per-CPU counters (index into the `mld_stats` array). The malformed reasons are those of
 * services/sniffer/decode.py MALFORMED_REASONS, so every path counts damage the same way. */
#define MLD_STAT_PACKETS 0        /* every frame the program saw */
#define MLD_STAT_FLOW_PACKETS 1   /* frames counted into a flow */
#define MLD_STAT_FLOW_BYTES 2     /* IP bytes counted into a flow */
#define MLD_STAT_FLOWS_CREATED 3  /* new map entries */
#define MLD_STAT_FLOWS_ENDED 4    /* flows ended in the kernel (FIN/RST/idle/active on a packet) */
#define MLD_STAT_RINGBUF_FULL 5   /* END notices that did not fit: that flow is lost (counted) */
#define MLD_STAT_MAP_FULL 6       /* entries that could not be created */
#define MLD_STAT_NOTICE_LOST 7    /* START/TERM notices that did not fit (harmless: the sweep finds them) */
#define MLD_STAT_TRUNCATED_FRAME 8
#define MLD_STAT_NON_IP 9
#define MLD_STAT_VLAN_TOO_DEEP 10
#define MLD_STAT_TRUNCATED_IP 11
#define MLD_STAT_BAD_IP_VERSION 12
#define MLD_STAT_BAD_IP_HEADER_LENGTH 13
#define MLD_STAT_BAD_IP_TOTAL_LENGTH 14
#define MLD_STAT_IP_FRAGMENT 15
#define MLD_STAT_IPV6_EXT_HEADERS 16
#define MLD_STAT_TRUNCATED_L4 17
#define MLD_STAT_BAD_TCP_HEADER_LENGTH 18
#define MLD_STAT_LOST_PACKETS 19  /* packets of flows lost to a full ring buffer */
#define MLD_STAT_BYTES 20         /* frame bytes of every frame the program saw */
#define MLD_STAT_MAX 24

/* Canonical flow key: the initiator (the first packet's sender) is src. IPv4 addresses occupy the
 * first 4 bytes, the rest is zero. Ports are zero for protocols other than TCP, UDP and SCTP:
 * ICMP flows are keyed by address pair, the first packet's type and code are kept in the value. */
struct mld_flow_key {
	__u8 src_addr[16];
	__u8 dst_addr[16];
	__u16 src_port;
	__u16 dst_port;
	__u16 vlan_id;
	__u8 protocol;
	__u8 ip_version;
};

/* Inter-arrival times in ns; the sum of squares is 128-bit (lo, hi) so it never overflows. */
struct mld_piat {
	__u64 min_ns;
	__u64 max_ns;
	__u64 sum_ns;
	__u64 sumsq_lo;
	__u64 sumsq_hi;
};

/* Counters of one direction. */
struct mld_dir {
	__u64 packets;
	__u64 bytes;
	__u64 ps_sumsq;
	__u64 first_ns;
	__u64 last_ns;
	__u32 ps_min;
	__u32 ps_max;
	struct mld_piat piat;
	__u32 syn;
	__u32 ack;
	__u32 psh;
	__u32 rst;
	__u32 fin;
	__u32 urg;
};

/* Map value: everything the feature grammar needs, copied as a whole into END notices.
 * No bpf_spin_lock: LRU hash maps do not support one (EOPNOTSUPP). Additive counters use atomic
 * adds; first/last/min/max are plain stores, exact unless one flow is processed on two CPUs at the
 * same instant. */
struct mld_flow_value {
	__u64 first_ns;
	__u64 last_ns;
	__u64 term_ns;      /* when FIN both ways or RST was seen; 0 while open */
	__u32 term_reason;  /* MLD_END_FIN or MLD_END_RST */
	__u32 fin_dirs;     /* bit per direction that sent a FIN */
	__u32 icmp;         /* ICMP type << 8 | code of the first packet */
	__u32 pad;
	struct mld_piat piat;  /* bidirectional */
	struct mld_dir dir[2];
};

/* Ring-buffer notice. START carries only the key; END carries the final counters. */
struct mld_flow_event {
	__u32 kind;
	__u32 reason;
	struct mld_flow_key key;
	struct mld_flow_value c;
};

/* Settings written by user space into the one-element `mld_config` array. */
struct mld_config {
	__u64 idle_timeout_ns;
	__u64 active_timeout_ns;
	__u64 linger_ns;      /* tcp_close_linger */
	__u32 start_notices;  /* 1: send a START notice per new flow */
	__u32 pad;
	__u64 half_open_ns;   /* idle timeout while the responder has sent nothing; 0 = off */
};

#endif
