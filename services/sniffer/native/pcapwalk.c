/* Record walk of a classic pcap: where each record starts. The one step of the pcap path that
 * cannot be vectorised (each record's position depends on the previous record's length), so it
 * is done here; pcapfile.py has the same walk in Python as the fallback and the test oracle.
 *
 * Returns the number of record offsets written to `out` (at most `cap`); `*stop` receives the
 * offset where the walk stopped (end of data, a damaged record, or `cap` reached).
 */
#include <stdint.h>

static uint32_t rd32(const uint8_t *p, int big_endian) {
    if (big_endian)
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

long mld_pcap_walk(const uint8_t *buf, long n, long start, int big_endian, long max_incl, int64_t *out,
                   long cap, long *stop) {
    long off = start, count = 0;
    while (count < cap && off + 16 <= n) {
        long incl = (long)rd32(buf + off + 8, big_endian);
        if (incl > max_incl || off + 16 + incl > n)
            break;
        out[count++] = off;
        off += 16 + incl;
    }
    *stop = off;
    return count;
}
