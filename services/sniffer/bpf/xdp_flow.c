// SPDX-License-Identifier: GPL-2.0
/* ML Defender XDP flow meter: counts packets into an in-kernel flow table and always passes them.
 *
 * Why in the kernel: user space then handles one record per flow instead of one event per packet.
 * A flow that ends on a packet (TCP FIN in both directions, RST, idle or active timeout seen when the
 * next packet arrives) is copied whole into the ring buffer and removed, so the next packet starts a
 * fresh flow exactly as the user-space flow table does. Flows that just go quiet are found by the
 * user-space sweep. Layout of key and value: xdp_flow.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xdp_flow.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_QINQ_OLD 0x9100
#define IPPROTO_AH_ 51
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMP_ 1
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP_ 132
#define MAX_IPV6_EXT 8

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mld_flow_key);
	__type(value, struct mld_flow_value);
} mld_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} mld_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mld_config);
} mld_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MLD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mld_stats SEC(".maps");

/* Scratch space for an end notice (too big for the 512-byte stack next to everything else). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mld_flow_event);
} mld_scratch SEC(".maps");

/* Same for the fresh value of a new entry. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mld_flow_value);
} mld_zero SEC(".maps");

struct pkt {
	struct mld_flow_key key;
	__u32 size;
	__u32 icmp;
	__u8 tcp_flags;
};

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&mld_stats, &idx);

	if (v)
		*v += n;
}

/* 128-bit accumulate of x*x: no float in BPF, and ns^2 overflows 64 bits after ~4.3 s. */
static __always_inline void add_square(struct mld_piat *p, __u64 x)
{
	__u64 lo32 = x & 0xffffffffULL, hi32 = x >> 32;
	__u64 ll = lo32 * lo32, lh = lo32 * hi32, hh = hi32 * hi32;
	__u64 mid_lo = lh << 33, mid_hi = lh >> 31; /* 2*lh*2^32 */
	__u64 sq_lo = ll + mid_lo;
	__u64 sq_hi = hh + mid_hi + (sq_lo < ll ? 1 : 0);
	__u64 old = __sync_fetch_and_add(&p->sumsq_lo, sq_lo);

	sq_hi += (old + sq_lo < old) ? 1 : 0;
	if (sq_hi)
		__sync_fetch_and_add(&p->sumsq_hi, sq_hi);
}

static __always_inline void add_piat(struct mld_piat *p, __u64 piat, int first)
{
	if (first || piat < p->min_ns)
		p->min_ns = piat;
	if (piat > p->max_ns)
		p->max_ns = piat;
	__sync_fetch_and_add(&p->sum_ns, piat);
	add_square(p, piat);
}

static __always_inline void count_packet(struct mld_flow_value *c, const struct pkt *pk, int d, __u64 now)
{
	struct mld_dir *dir = &c->dir[d & 1];
	__u64 total = c->dir[0].packets + c->dir[1].packets;
	__u64 n;
	__u8 f = pk->tcp_flags;

	if (total == 0) {
		c->first_ns = now;
		c->icmp = pk->icmp;
	}
	else
		add_piat(&c->piat, now - c->last_ns, total == 1);
	c->last_ns = now;

	n = __sync_fetch_and_add(&dir->packets, 1);
	if (n == 0) {
		dir->first_ns = now;
		dir->ps_min = pk->size;
	} else {
		add_piat(&dir->piat, now - dir->last_ns, n == 1);
	}
	dir->last_ns = now;
	__sync_fetch_and_add(&dir->bytes, pk->size);
	__sync_fetch_and_add(&dir->ps_sumsq, (__u64)pk->size * pk->size);
	if (pk->size < dir->ps_min)
		dir->ps_min = pk->size;
	if (pk->size > dir->ps_max)
		dir->ps_max = pk->size;
	if (f & TCP_SYN)
		__sync_fetch_and_add(&dir->syn, 1);
	if (f & TCP_ACK)
		__sync_fetch_and_add(&dir->ack, 1);
	if (f & TCP_PSH)
		__sync_fetch_and_add(&dir->psh, 1);
	if (f & TCP_RST)
		__sync_fetch_and_add(&dir->rst, 1);
	if (f & TCP_FIN) {
		__sync_fetch_and_add(&dir->fin, 1);
		__sync_fetch_and_or(&c->fin_dirs, 1u << (d & 1));
	}
}

static __always_inline int parse_l4(struct pkt *pk, void *l4, void *data_end)
{
	__u8 proto = pk->key.protocol;
	__u8 *p = l4;

	if (proto == IPPROTO_TCP_) {
		if ((void *)(p + 14) > data_end)
			return MLD_STAT_TRUNCATED_L4;
		if ((p[12] >> 4) < 5)
			return MLD_STAT_BAD_TCP_HEADER_LENGTH;
		pk->key.src_port = ((__u16)p[0] << 8) | p[1];
		pk->key.dst_port = ((__u16)p[2] << 8) | p[3];
		pk->tcp_flags = p[13];
	} else if (proto == IPPROTO_UDP_ || proto == IPPROTO_SCTP_) {
		if ((void *)(p + 4) > data_end)
			return MLD_STAT_TRUNCATED_L4;
		pk->key.src_port = ((__u16)p[0] << 8) | p[1];
		pk->key.dst_port = ((__u16)p[2] << 8) | p[3];
	} else if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_) {
		if ((void *)(p + 2) > data_end)
			return MLD_STAT_TRUNCATED_L4;
		pk->icmp = ((__u32)p[0] << 8) | p[1];
	}
	return -1;
}

static __always_inline int is_v6_ext(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 60 || nh == 135 || nh == 139 || nh == 140 ||
	       nh == IPPROTO_FRAGMENT_ || nh == IPPROTO_AH_;
}

/* Fills pk from the frame; returns -1 when it is a countable IP packet, else a MLD_STAT_ reason.
 * Same checks, in the same order, as services/sniffer/decode.py. */
static __always_inline int parse(struct xdp_md *ctx, struct pkt *pk)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cur;
	__u16 proto;
	int i;

	if ((void *)(eth + 1) > data_end)
		return MLD_STAT_TRUNCATED_FRAME;
	proto = bpf_ntohs(eth->h_proto);
	cur = eth + 1;
	for (i = 0; i < 3; i++) {
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD && proto != ETH_P_QINQ_OLD)
			break;
		if (i == 2)
			return MLD_STAT_VLAN_TOO_DEEP;
		__be16 *tag = cur;

		if ((void *)(tag + 2) > data_end)
			return MLD_STAT_TRUNCATED_FRAME;
		if (i == 0)
			pk->key.vlan_id = bpf_ntohs(tag[0]) & 0x0fff;
		proto = bpf_ntohs(tag[1]);
		cur = tag + 2;
	}

	if (proto == ETH_P_IP) {
		__u8 *ip = cur;
		__u32 ihl, tot;

		if ((void *)(ip + 20) > data_end)
			return MLD_STAT_TRUNCATED_IP;
		if ((ip[0] >> 4) != 4)
			return MLD_STAT_BAD_IP_VERSION;
		ihl = (ip[0] & 0x0f) * 4;
		if (ihl < 20)
			return MLD_STAT_BAD_IP_HEADER_LENGTH;
		if (cur + ihl > data_end)
			return MLD_STAT_TRUNCATED_IP;
		tot = ((__u32)ip[2] << 8) | ip[3];
		if (tot < ihl)
			return MLD_STAT_BAD_IP_TOTAL_LENGTH;
		if ((((__u32)ip[6] << 8) | ip[7]) & 0x3fff)
			return MLD_STAT_IP_FRAGMENT;
		pk->key.ip_version = 4;
		pk->key.protocol = ip[9];
		__builtin_memcpy(pk->key.src_addr, ip + 12, 4);
		__builtin_memcpy(pk->key.dst_addr, ip + 16, 4);
		pk->size = tot;
		return parse_l4(pk, cur + ihl, data_end);
	}
	if (proto == ETH_P_IPV6) {
		__u8 *ip6 = cur;
		__u8 nh, *l4;

		if ((void *)(ip6 + 40) > data_end)
			return MLD_STAT_TRUNCATED_IP;
		if ((ip6[0] >> 4) != 6)
			return MLD_STAT_BAD_IP_VERSION;
		pk->key.ip_version = 6;
		__builtin_memcpy(pk->key.src_addr, ip6 + 8, 16);
		__builtin_memcpy(pk->key.dst_addr, ip6 + 24, 16);
		pk->size = 40 + (((__u32)ip6[4] << 8) | ip6[5]);
		nh = ip6[6];
		l4 = ip6 + 40;
		for (i = 0; i < MAX_IPV6_EXT; i++) {
			if (!is_v6_ext(nh))
				break;
			if ((void *)(l4 + 8) > data_end)
				return MLD_STAT_IPV6_EXT_HEADERS;
			if (nh == IPPROTO_FRAGMENT_) {
				if ((((__u32)l4[2] << 8) | l4[3]) & 0xfff9) /* offset != 0 or M set */
					return MLD_STAT_IP_FRAGMENT;
				nh = l4[0];
				l4 += 8;
			} else if (nh == IPPROTO_AH_) {
				__u32 len = ((__u32)l4[1] + 2) * 4;

				nh = l4[0];
				l4 += len;
			} else {
				__u32 len = ((__u32)l4[1] + 1) * 8;

				nh = l4[0];
				l4 += len;
			}
		}
		if (is_v6_ext(nh) || (void *)l4 > data_end)
			return MLD_STAT_IPV6_EXT_HEADERS;
		pk->key.protocol = nh;
		return parse_l4(pk, l4, data_end);
	}
	return MLD_STAT_NON_IP;
}

static __always_inline void reverse_key(struct mld_flow_key *r, const struct mld_flow_key *k)
{
	__builtin_memcpy(r->src_addr, k->dst_addr, 16);
	__builtin_memcpy(r->dst_addr, k->src_addr, 16);
	r->src_port = k->dst_port;
	r->dst_port = k->src_port;
	r->vlan_id = k->vlan_id;
	r->protocol = k->protocol;
	r->ip_version = k->ip_version;
}

static __always_inline void notify_key(__u32 kind, const struct mld_flow_key *key)
{
	struct mld_flow_event *ev = bpf_ringbuf_reserve(&mld_events, sizeof(*ev), 0);

	if (!ev) {
		stat_add(MLD_STAT_NOTICE_LOST, 1);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->kind = kind;
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	bpf_ringbuf_submit(ev, 0);
}

/* Sends the whole flow as an END notice and removes the entry; a full ring buffer loses the flow,
 * counted with its packets. */
static __always_inline void end_flow(struct mld_flow_event *ev, struct mld_flow_value *val,
				     const struct mld_flow_key *key, __u32 reason)
{
	__builtin_memcpy(&ev->c, val, sizeof(ev->c));
	ev->kind = MLD_EVENT_END;
	ev->reason = reason;
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	if (bpf_ringbuf_output(&mld_events, ev, sizeof(*ev), 0) != 0) {
		stat_add(MLD_STAT_RINGBUF_FULL, 1);
		stat_add(MLD_STAT_LOST_PACKETS, ev->c.dir[0].packets + ev->c.dir[1].packets);
	} else {
		stat_add(MLD_STAT_FLOWS_ENDED, 1);
	}
	bpf_map_delete_elem(&mld_flows, key);
}

/* Does this packet start a new flow after the entry's flow? Same rules and order as
 * services/sniffer/flows.py: idle gap (half-open timeout while unanswered), then TCP close (linger over or a bare SYN), then active. */
static __always_inline __u32 ends_before(const struct mld_flow_value *val, const struct pkt *pk,
					 const struct mld_config *cfg, __u64 now)
{
	__u64 idle = cfg->idle_timeout_ns;

	if (val->dir[0].packets + val->dir[1].packets == 0)
		return MLD_END_NONE;
	/* half-open: the responder has sent nothing, so the shorter timeout applies */
	if (val->dir[1].packets == 0 && cfg->half_open_ns && cfg->half_open_ns < idle)
		idle = cfg->half_open_ns;
	if (now - val->last_ns > idle)
		return MLD_END_IDLE;
	if (val->term_ns && (now > val->term_ns + cfg->linger_ns ||
			     (pk->key.protocol == IPPROTO_TCP_ && (pk->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)))
		return val->term_reason;
	if (now - val->first_ns > cfg->active_timeout_ns)
		return MLD_END_ACTIVE;
	return MLD_END_NONE;
}

SEC("xdp")
int mld_xdp_flow(struct xdp_md *ctx)
{
	struct pkt pk = {};
	struct mld_flow_key rkey;
	struct mld_flow_value *val;
	struct mld_flow_event *ev;
	struct mld_config *cfg;
	__u32 zero = 0, reason;
	__u64 now = bpf_ktime_get_ns();
	int d = MLD_DIR_SRC2DST, why;

	stat_add(MLD_STAT_PACKETS, 1);
	stat_add(MLD_STAT_BYTES, (__u64)(ctx->data_end - ctx->data));
	why = parse(ctx, &pk);
	if (why >= 0) {
		stat_add(why, 1);
		return XDP_PASS;
	}
	cfg = bpf_map_lookup_elem(&mld_config, &zero);
	ev = bpf_map_lookup_elem(&mld_scratch, &zero);
	if (!cfg || !ev)
		return XDP_PASS;

	val = bpf_map_lookup_elem(&mld_flows, &pk.key);
	if (!val) {
		reverse_key(&rkey, &pk.key);
		val = bpf_map_lookup_elem(&mld_flows, &rkey);
		if (val) {
			d = MLD_DIR_DST2SRC;
			pk.key = rkey; /* the entry's key, for notices */
		}
	}

	if (val) {
		reason = ends_before(val, &pk, cfg, now);
		if (reason != MLD_END_NONE) {
			end_flow(ev, val, &pk.key, reason);
			val = NULL;
			if (d == MLD_DIR_DST2SRC) { /* the new flow's initiator is this packet's sender */
				reverse_key(&rkey, &pk.key);
				pk.key = rkey;
				d = MLD_DIR_SRC2DST;
			}
		}
	}

	if (!val) {
		val = bpf_map_lookup_elem(&mld_zero, &zero);
		if (!val)
			return XDP_PASS;
		if (bpf_map_update_elem(&mld_flows, &pk.key, val, BPF_NOEXIST) == 0) {
			stat_add(MLD_STAT_FLOWS_CREATED, 1);
			if (cfg->start_notices)
				notify_key(MLD_EVENT_START, &pk.key);
		}
		val = bpf_map_lookup_elem(&mld_flows, &pk.key);
		if (!val) {
			stat_add(MLD_STAT_MAP_FULL, 1);
			return XDP_PASS;
		}
	}

	count_packet(val, &pk, d, now);
	stat_add(MLD_STAT_FLOW_PACKETS, 1);
	stat_add(MLD_STAT_FLOW_BYTES, pk.size);
	if (pk.key.protocol == IPPROTO_TCP_ && val->term_ns == 0 &&
	    ((pk.tcp_flags & TCP_RST) || val->fin_dirs == 3)) {
		val->term_reason = (pk.tcp_flags & TCP_RST) ? MLD_END_RST : MLD_END_FIN;
		val->term_ns = now;
		notify_key(MLD_EVENT_TERM, &pk.key);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
