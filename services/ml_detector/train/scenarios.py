"""Labelled behaviours for the training captures: what nmap, hping3, hydra, worms and beaconing
bots put on the wire, and the benign traffic of ordinary hosts (web pages, DNS, TLS, SSH, SMB,
keepalives, LAN chatter, slow polling). Each attack function returns the addresses it used as
attacker; every address is in 198.18.0.0/15 (RFC 2544 benchmarking space).

Attack kinds map to detectors in ATTACK_MODELS: ddos (floods), ransomware (SMB/RPC spreading),
traffic (scans, sweeps, botnet beaconing), internal (password guessing / lateral movement).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from services.ml_detector.train.pcapgen import Capture, Tcp

ATTACK_MODELS: dict[str, str] = {
    "syn_flood": "ddos",
    "udp_flood": "ddos",
    "icmp_flood": "ddos",
    "smb_spread": "ransomware",
    "rpc_spread": "ransomware",
    "portscan": "traffic",
    "connect_scan": "traffic",
    "udp_scan": "traffic",
    "slow_scan": "traffic",
    "icmp_sweep": "traffic",
    "botnet": "traffic",
    "ssh_bruteforce": "internal",
    "ftp_bruteforce": "internal",
    "rdp_bruteforce": "internal",
    "lateral_admin": "internal",
}

LAN = "198.18.1."
SERVERS = "198.18.0."
EXTERNAL = "198.19."
RESOLVER = "198.18.0.53"


def ext(r: random.Random) -> str:
    return f"{EXTERNAL}{r.randint(1, 120)}.{r.randint(1, 254)}"


def eph(r: random.Random) -> int:
    return r.randint(32768, 60999)


def rtt(r: random.Random, wan: bool = True) -> float:
    return r.uniform(0.01, 0.12) if wan else r.uniform(0.0002, 0.003)


# ---------------------------------------------------------------- benign


def dns_lookup(cap: Capture, r: random.Random, t: float, host: str, resolver: str = RESOLVER) -> float:
    """One query and its answer (a UDP flow of two packets)."""
    q = r.randint(28, 60)
    sport = eph(r)
    cap.udp(t, host, resolver, sport, 53, q)
    d = r.uniform(0.001, 0.06)
    cap.udp(t + d, resolver, host, 53, sport, q + r.randint(16, 220))
    return t + d


def web_page(cap: Capture, r: random.Random, t: float, host: str) -> None:
    """A page load: DNS for each server, then 3-30 HTTP(S) connections to them within ~3 s."""
    n_servers = r.randint(1, 14)
    servers = [ext(r) for _ in range(n_servers)]
    for _ in servers:
        t = dns_lookup(cap, r, t + r.uniform(0.0, 0.05), host)
    n_conn = r.randint(max(2, n_servers), max(3, min(30, n_servers * 3)))
    port = r.choice([80, 443, 443])
    for i in range(n_conn):
        srv = servers[i % n_servers]
        c = Tcp(cap, t + r.uniform(0, 3.0), host, srv, eph(r), port, rtt(r))
        c.handshake()
        for _ in range(r.randint(1, 4)):  # keep-alive reuse; servers think, pages pause between fetches
            c.send(
                True, r.randint(200, 900), r.uniform(0.0, 0.05) if r.random() < 0.6 else r.uniform(0.1, 1.5)
            )
            c.send(
                False, min(int(r.lognormvariate(8.5, 1.4)) + 200, 400_000), c.rtt + r.expovariate(1 / 0.15)
            )
        c.close(r.choice(["fin", "fin", "fin", "rst"]), by_client=r.random() < 0.7)


def browse(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    t = start + r.uniform(0, 10)
    while t < start + dur:
        web_page(cap, r, t, host)
        t += r.expovariate(1 / 25.0) + 2


def tls_session(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    c = Tcp(cap, start + r.uniform(0, 20), host, ext(r), eph(r), 443, rtt(r))
    c.handshake()
    c.send(True, r.randint(200, 600))
    c.send(False, r.randint(3000, 6000), c.rtt)
    end = start + dur * r.uniform(0.5, 1.0)
    while c.t < end:
        c.send(r.random() < 0.5, r.randint(40, 4000), r.expovariate(1 / 8.0))
    c.close("fin")


def ssh_interactive(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    srv = SERVERS + str(r.randint(10, 40)) if r.random() < 0.6 else ext(r)
    c = Tcp(cap, start + r.uniform(0, 30), host, srv, eph(r), 22, rtt(r, wan=not srv.startswith(SERVERS)))
    c.handshake()
    c.send(False, r.randint(20, 40), c.rtt)
    c.send(True, r.randint(20, 40), 0.01)
    c.send(True, r.randint(1000, 1500), 0.01)
    c.send(False, r.randint(1000, 1500), c.rtt)
    c.send(True, r.randint(40, 1100), 0.02)
    c.send(False, r.randint(300, 1100), c.rtt)
    end = start + dur * r.uniform(0.05, 1.0)
    while c.t < end:  # typing in bursts, with human pauses (heavy-tailed)
        pause = r.expovariate(1 / 0.4) if r.random() < 0.8 else r.lognormvariate(1.0, 1.0)
        c.send(True, r.choice([36, 36, 52, 68]), pause)
        c.send(False, r.randint(36, 1400), c.rtt)
    c.close("fin", by_client=r.random() < 0.8)


def ssh_job(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    """Automation (scp, git over ssh): a few sessions, minutes apart, moving real data."""
    t = start + r.uniform(0, 60)
    srv = SERVERS + str(r.randint(10, 40))
    while t < start + dur:
        c = Tcp(cap, t, host, srv, eph(r), 22, rtt(r, wan=False))
        c.handshake()
        c.send(False, r.randint(20, 40), c.rtt)
        c.send(True, r.randint(20, 40), 0.01)
        c.send(True, r.randint(1000, 1500))
        c.send(False, r.randint(1000, 1500), c.rtt)
        c.send(True, r.randint(500, 1200))
        c.send(False, r.randint(300, 600), c.rtt)
        for _ in range(r.randint(2, 20)):
            c.send(r.random() < 0.5, r.randint(2000, 60_000), r.uniform(0.01, 0.5))
        c.close("fin")
        t += r.uniform(60, 400)


def smb_session(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    srv = SERVERS + str(r.randint(41, 60))
    t = start + r.uniform(0, 30)
    for _ in range(r.randint(0, 5)):  # Windows probes: short, answered, closed by client RST
        c = Tcp(cap, t, host, srv, eph(r), r.choice([445, 445, 139]), rtt(r, wan=False))
        c.handshake()
        c.send(True, r.randint(100, 300))
        c.send(False, r.randint(200, 500), c.rtt)
        c.close("rst")
        t += r.uniform(0.5, 40)
    c = Tcp(cap, t, host, srv, eph(r), 445, rtt(r, wan=False))
    c.handshake()
    for _ in range(r.randint(3, 30)):
        c.send(True, r.randint(100, 30_000), r.uniform(0.001, 2.0))
        c.send(False, r.randint(100, 30_000), c.rtt)
    c.close(r.choice(["fin", "rst"]))


def keepalive(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    c = Tcp(cap, start + r.uniform(0, 5), host, ext(r), eph(r), r.choice([443, 5222, 993, 8883]), rtt(r))
    c.handshake()
    c.send(True, r.randint(100, 500))
    c.send(False, r.randint(100, 3000), c.rtt)
    period = r.uniform(15, 60)
    while c.t < start + dur:
        c.send(r.random() < 0.5, r.randint(1, 60), period + r.uniform(-1, 1))
    t = start + r.uniform(0, 64)
    ntp = ext(r)
    while t < start + dur:  # NTP poll
        cap.udp(t, host, ntp, 123, 123, 48)
        cap.udp(t + rtt(r), ntp, host, 123, 123, 48)
        t += 64


def lan_chatter(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    """mDNS, LLMNR, NetBIOS and SSDP announcements: unanswered UDP to group addresses."""
    t = start + r.uniform(0, 20)
    while t < start + dur:
        kind = r.randrange(4)
        if kind == 0:
            cap.udp(t, host, "224.0.0.251", 5353, 5353, r.randint(30, 300))
        elif kind == 1:
            cap.udp(t, host, "224.0.0.252", eph(r), 5355, r.randint(25, 60))
        elif kind == 2:
            cap.udp(t, host, LAN + "255", 137, 137, 50)
        else:
            cap.udp(t, host, "239.255.255.250", eph(r), 1900, r.randint(120, 400))
        t += r.expovariate(1 / 20.0)


def slow_polling(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    """Update checks and telemetry: the same server every few minutes (periodic but slow)."""
    srv = ext(r)
    period = r.uniform(60, 300)
    t = start + r.uniform(0, period)
    while t < start + dur:
        t = dns_lookup(cap, r, t, host)
        c = Tcp(cap, t, host, srv, eph(r), 443, rtt(r))
        c.handshake()
        c.send(True, r.randint(300, 800))
        c.send(False, r.randint(300, 5000), c.rtt)
        c.close("fin")
        t += period * r.uniform(0.9, 1.1)


def ping_gateway(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    t = start + r.uniform(0, 30)
    ident = r.randint(1, 65535)
    for seq in range(r.randint(1, 10)):
        cap.icmp(t, host, "198.18.0.1", 8, 0, ident, seq, 56)
        cap.icmp(t + rtt(r, wan=False), "198.18.0.1", host, 0, 0, ident, seq, 56)
        t += 1.0


def strays(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    """Lone packets: late ACK/FIN/RST after a flow ended, QUIC/DHT/NAT keepalive one-shots."""
    t = start + r.uniform(0, 30)
    while t < start + dur:
        kind = r.randrange(5)
        peer = ext(r) if r.random() < 0.7 else SERVERS + str(r.randint(2, 250))
        if kind == 4:  # a connection to a host that is down: SYN and its retransmissions, no answer
            port = r.choice([80, 443, 8080, 22, 445, r.randint(1024, 65535)])
            sport = eph(r)
            for k in range(r.randint(1, 3)):
                cap.tcp(t + k * (1 << k), host, peer, sport, port, 0x02, 1000, 0)
        elif kind == 0:
            Tcp(cap, t, peer, host, r.choice([80, 443, 445, 139]), eph(r), 0.01).close("rst")
        elif kind == 1:
            cap.tcp(
                t,
                host,
                peer,
                eph(r),
                r.choice([80, 443, r.randint(1024, 65535)]),
                0x10,
                r.randint(1, 1 << 30),
                1,
            )
        elif kind == 2:
            cap.udp(
                t, host, peer, eph(r), r.choice([443, 6881, 4500, r.randint(1024, 65535)]), r.randint(1, 1200)
            )
        else:
            cap.tcp(t, peer, host, r.choice([443, 80]), eph(r), 0x11, r.randint(1, 1 << 30), 1)
        t += r.expovariate(1 / 30.0)


def idle_session(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    """A mapped drive or remote shell left open: a few requests seconds to minutes apart."""
    port = r.choice([445, 139, 22, 3389, 5985])
    srv = SERVERS + str(r.randint(41, 80))
    c = Tcp(cap, start + r.uniform(0, 60), host, srv, eph(r), port, rtt(r, wan=False))
    c.handshake()
    c.send(True, r.randint(100, 1500))
    c.send(False, r.randint(100, 1500), c.rtt)
    end = start + dur * r.uniform(0.3, 1.0)
    while c.t < end:
        c.send(r.random() < 0.6, r.randint(40, 3000), r.lognormvariate(1.5, 1.2))
        c.send(r.random() < 0.5, r.randint(40, 600), c.rtt)
    c.close(r.choice(["fin", "rst"]), by_client=r.random() < 0.7)


def ftp_download(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    srv = SERVERS + str(r.randint(61, 70))
    c = Tcp(cap, start + r.uniform(0, 60), host, srv, eph(r), 21, rtt(r, wan=False))
    c.handshake()
    c.send(False, r.randint(30, 80), c.rtt)
    for _ in range(r.randint(4, 10)):
        c.send(True, r.randint(10, 40), r.uniform(0.1, 1.5))
        c.send(False, r.randint(20, 120), c.rtt)
    d = Tcp(cap, c.t + 0.01, host, srv, eph(r), r.randint(50000, 60000), c.rtt)
    d.handshake()
    d.send(False, r.randint(10_000, 300_000))
    d.close("fin", by_client=False)
    c.t = d.t
    c.send(False, 24, 0.01)
    c.close("fin")


BENIGN: dict[str, Callable[[Capture, random.Random, str, float, float], None]] = {
    "browse": browse,
    "tls_session": tls_session,
    "ssh_interactive": ssh_interactive,
    "ssh_job": ssh_job,
    "smb_session": smb_session,
    "keepalive": keepalive,
    "lan_chatter": lan_chatter,
    "slow_polling": slow_polling,
    "ping_gateway": ping_gateway,
    "ftp_download": ftp_download,
    "strays": strays,
    "idle_session": idle_session,
}


def benign_host(cap: Capture, r: random.Random, host: str, start: float, dur: float) -> None:
    """A host doing 2-5 ordinary things at once."""
    for name in r.sample(sorted(BENIGN), r.randint(2, 5)):
        BENIGN[name](cap, r, host, start, dur)


# ---------------------------------------------------------------- attacks


def _answer(r: random.Random, p_open: float, p_closed: float) -> str:
    x = r.random()
    return "open" if x < p_open else "closed" if x < p_open + p_closed else "filtered"


def portscan(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """nmap -sS: SYN to many ports of one or a few hosts; open ports answered, then RST."""
    targets = [SERVERS + str(r.randint(2, 250)) for _ in range(r.randint(1, 3))]
    ports = r.sample(range(1, 65535), r.randint(60, 1200))
    rate = r.uniform(80, 3000)
    p_closed = r.choice([0.0, 0.05, 0.9])
    t = start
    sport = eph(r)
    for tgt in targets:
        for p in ports:
            Tcp(cap, t, atk, tgt, sport, p, rtt(r, wan=False)).handshake(_syn_only(r, p_closed))
            t += r.expovariate(rate)


def _syn_only(r: random.Random, p_closed: float) -> str:
    """A SYN probe's fate: closed (RST back), filtered (silence) or open (SYN-ACK, prober RSTs)."""
    return "closed" if r.random() < p_closed else "filtered" if r.random() < 0.98 else "synonly"


def slow_scan(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """nmap -T1/-T2: the same probes a few seconds apart."""
    tgt = SERVERS + str(r.randint(2, 250))
    t = start
    for p in r.sample(range(1, 10000), r.randint(30, 120)):
        Tcp(cap, t, atk, tgt, eph(r), p, rtt(r, wan=False)).handshake(_answer(r, 0.02, r.choice([0.0, 0.5])))
        t += r.uniform(0.4, 3.0)


def connect_scan(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """nmap -sT: full handshakes on open ports, closed immediately with RST."""
    tgt = SERVERS + str(r.randint(2, 250))
    t = start
    rate = r.uniform(50, 800)
    for p in r.sample(range(1, 10000), r.randint(50, 1000)):
        c = Tcp(cap, t, atk, tgt, eph(r), p, rtt(r, wan=False))
        if c.handshake(_answer(r, 0.02, r.choice([0.1, 0.9]))):
            c.close("rst")
        t += r.expovariate(rate)


def udp_scan(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """nmap -sU: empty or small UDP probes; closed ports answer with ICMP port unreachable."""
    tgt = SERVERS + str(r.randint(2, 250))
    t = start
    sport = eph(r)
    for p in r.sample(range(1, 10000), r.randint(50, 600)):
        cap.udp(t, atk, tgt, sport, p, r.choice([0, 0, 8, 40]))
        if r.random() < 0.3:
            cap.icmp(t + 0.001, tgt, atk, 3, 3, 0, 0, 28)
        t += r.expovariate(r.uniform(20, 200))


def icmp_sweep(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """nmap -sn / fping: echo requests to most of a /24, a few hosts answer."""
    base = f"198.18.{r.randint(2, 250)}."
    hosts = r.sample(range(0, 256), r.randint(30, 256))
    t = start
    ident = r.randint(1, 65535)
    for _rep in range(r.choice([1, 2])):
        for h in hosts:
            dst = base + str(h)
            cap.icmp(t, atk, dst, 8, 0, ident, r.randint(0, 65535), r.choice([0, 8, 56]))
            if r.random() < 0.05:
                cap.icmp(t + 0.001, dst, atk, 0, 0, ident, 0, 0)
            t += r.expovariate(r.uniform(50, 500))


def syn_flood(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """hping3 -S --flood (rate-limited here): one victim port, random source ports."""
    tgt, port = SERVERS + str(r.randint(2, 250)), r.choice([80, 443, 22, 8080])
    t, n = start, r.randint(1500, 6000)
    rate = r.uniform(300, 5000)
    for _ in range(n):
        c = Tcp(cap, t, atk, tgt, r.randint(1024, 65535), port, rtt(r, wan=False))
        c.handshake("synonly" if r.random() < 0.3 else "filtered")
        t += r.expovariate(rate)


def udp_flood(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    tgt, port = SERVERS + str(r.randint(2, 250)), r.choice([53, 123, 80, r.randint(1, 65535)])
    t, rate = start, r.uniform(300, 5000)
    same_port = r.random() < 0.5
    sport = eph(r)
    for _ in range(r.randint(1500, 6000)):
        cap.udp(t, atk, tgt, sport if same_port else r.randint(1024, 65535), port, r.randint(0, 1400))
        t += r.expovariate(rate)


def icmp_flood(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    tgt = SERVERS + str(r.randint(2, 250))
    t, rate, ident = start, r.uniform(300, 5000), r.randint(1, 65535)
    size = r.choice([56, 500, 1400])
    for seq in range(r.randint(1500, 5000)):
        cap.icmp(t, atk, tgt, 8, 0, ident, seq & 0xFFFF, size)
        if r.random() < 0.5:
            cap.icmp(t + 0.0005, tgt, atk, 0, 0, ident, seq & 0xFFFF, size)
        t += r.expovariate(rate)


def smb_spread(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """A worm (WannaCry-like): 445 then 139 on many addresses; a few answer and get a payload."""
    t = start
    base = f"198.18.{r.randint(2, 250)}."
    for h in r.sample(range(1, 255), r.randint(15, 200)):
        for port in (445, 139) if r.random() < 0.5 else (445,):
            c = Tcp(cap, t, atk, base + str(h), eph(r), port, rtt(r, wan=False))
            if c.handshake(_answer(r, 0.08, 0.3)):
                c.send(True, r.randint(150, 300))
                c.send(False, r.randint(200, 400), c.rtt)
                if r.random() < 0.5:
                    c.send(True, r.randint(5000, 80000))
                c.close(r.choice(["fin", "rst"]))
        t += r.expovariate(r.uniform(5, 80))


def rpc_spread(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """DCE/RPC lateral spreading: endpoint mapper (135) on many hosts, then a high port."""
    t = start
    base = f"198.18.{r.randint(2, 250)}."
    for h in r.sample(range(1, 255), r.randint(15, 150)):
        c = Tcp(cap, t, atk, base + str(h), eph(r), 135, rtt(r, wan=False))
        if c.handshake(_answer(r, 0.15, 0.3)):
            c.send(True, r.randint(70, 200))
            c.send(False, r.randint(100, 300), c.rtt)
            c.close("fin")
            d = Tcp(cap, c.t + 0.01, atk, base + str(h), eph(r), r.randint(49152, 65535), c.rtt)
            d.handshake()
            d.send(True, r.randint(500, 3000))
            d.send(False, r.randint(100, 400), d.rtt)
            d.close("rst")
        t += r.expovariate(r.uniform(3, 40))


def _guessing(
    cap: Capture,
    r: random.Random,
    atk: str,
    start: float,
    port: int,
    talk: Callable[[Tcp, random.Random], None],
) -> None:
    tgt = SERVERS + str(r.randint(2, 250))
    n = r.randint(8, 80)
    tasks = r.choice([1, 1, 2, 4])
    gap = r.uniform(0.3, 7.0)
    ts = [start + i * 0.05 for i in range(tasks)]
    for i in range(n):
        k = i % tasks
        c = Tcp(cap, ts[k], atk, tgt, eph(r), port, rtt(r, wan=r.random() < 0.3))
        c.handshake()
        talk(c, r)
        ts[k] = c.t + gap * r.uniform(0.7, 1.3)


def _ssh_talk(c: Tcp, r: random.Random) -> None:
    c.send(False, r.randint(20, 40), c.rtt)
    c.send(True, r.randint(20, 40), 0.005)
    c.send(True, r.randint(600, 1500), 0.005)
    c.send(False, r.randint(600, 1100), c.rtt)
    c.send(True, r.randint(40, 300), 0.01)
    c.send(False, r.randint(300, 1100), c.rtt)
    c.send(True, 16, 0.01)
    c.send(True, 52, 0.01)
    c.send(False, 52, c.rtt)
    for _ in range(r.randint(1, 6)):
        c.send(True, r.choice([84, 100, 116]), 0.02)
        c.send(False, r.choice([36, 52]), c.rtt + r.uniform(0.3, 2.5))
    c.close("fin", by_client=r.random() < 0.5)


def _ftp_talk(c: Tcp, r: random.Random) -> None:
    c.send(False, r.randint(20, 80), c.rtt)
    for _ in range(r.randint(1, 3)):
        c.send(True, r.randint(10, 20), 0.01)
        c.send(False, r.randint(30, 40), c.rtt)
        c.send(True, r.randint(10, 24), 0.01)
        c.send(False, 22, c.rtt + r.uniform(0.2, 3.0))
    c.close("fin", by_client=r.random() < 0.5)


def _rdp_talk(c: Tcp, r: random.Random) -> None:
    c.send(True, r.randint(19, 50))
    c.send(False, 19, c.rtt)
    c.send(True, r.randint(200, 400), 0.01)
    c.send(False, r.randint(800, 1500), c.rtt)
    c.send(True, r.randint(300, 2000), 0.05)
    c.send(False, r.randint(50, 400), c.rtt + r.uniform(0.1, 1.0))
    c.close(r.choice(["fin", "rst"]))


def ssh_bruteforce(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    _guessing(cap, r, atk, start, 22, _ssh_talk)


def ftp_bruteforce(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    _guessing(cap, r, atk, start, 21, _ftp_talk)


def rdp_bruteforce(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    _guessing(cap, r, atk, start, r.choice([3389, 23, 5900]), _rdp_talk)


def lateral_admin(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """Credential reuse: short admin sessions (SSH/WinRM/RDP) to many internal hosts in turn."""
    t = start
    for h in r.sample(range(2, 250), r.randint(12, 60)):
        port = r.choice([22, 5985, 3389])
        c = Tcp(cap, t, atk, SERVERS + str(h), eph(r), port, rtt(r, wan=False))
        if c.handshake(_answer(r, 0.6, 0.3)):
            (_ssh_talk if port == 22 else _rdp_talk)(c, r)
        t += r.uniform(0.2, 4.0)


def botnet(cap: Capture, r: random.Random, atk: str, start: float, dur: float) -> None:
    """A beaconing bot: C2 polls every 5-30 s, direct DNS to an outside resolver, P2P UDP."""
    c2 = [ext(r) for _ in range(r.randint(1, 5))]
    resolver = ext(r)
    period = r.uniform(5, 30)
    t = start
    while t < start + dur:
        for srv in c2:
            t = dns_lookup(cap, r, t, atk, resolver) if r.random() < 0.5 else t
            c = Tcp(cap, t, atk, srv, eph(r), r.choice([80, 80, 443, 8080]), rtt(r))
            c.handshake("open" if r.random() < 0.9 else "filtered")
            if c.t > t:
                c.send(True, r.randint(150, 400))
                c.send(False, r.randint(200, 20_000), c.rtt)
                c.close(r.choice(["fin", "rst"]))
            t += r.uniform(0.05, 1.0)
        if r.random() < 0.3:
            cap.udp(t, atk, ext(r), eph(r), r.randint(1024, 65535), r.randint(20, 400))
        t += period * r.uniform(0.85, 1.15)


ATTACKS: dict[str, Callable[[Capture, random.Random, str, float, float], None]] = {
    "syn_flood": syn_flood,
    "udp_flood": udp_flood,
    "icmp_flood": icmp_flood,
    "smb_spread": smb_spread,
    "rpc_spread": rpc_spread,
    "portscan": portscan,
    "connect_scan": connect_scan,
    "udp_scan": udp_scan,
    "slow_scan": slow_scan,
    "icmp_sweep": icmp_sweep,
    "botnet": botnet,
    "ssh_bruteforce": ssh_bruteforce,
    "ftp_bruteforce": ftp_bruteforce,
    "rdp_bruteforce": rdp_bruteforce,
    "lateral_admin": lateral_admin,
}
