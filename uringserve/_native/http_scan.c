/* The request-head recogniser declared in http_scan.h. Written by hand: it
 * is the one place where a library (llhttp) does the job well but its Python
 * binding's per-field callbacks cost more than the job. It accepts only what
 * it fully understands; the subset:
 *
 *   request-line  = ("GET" / "HEAD") SP origin-target SP "HTTP/1." ("1" / "0") CRLF
 *   origin-target = "/" *( unreserved / sub-delims / ":" / "@" / "/" / "?" / "%" )
 *   header-line   = token ":" *( SP / HTAB ) value CRLF
 *   value         = 1*( %x21-7E ) *( *( SP / HTAB ) 1*( %x21-7E ) )   ; no trailing blanks
 *   head          = request-line *header-line CRLF
 *
 * and declines (returns 0) a head with Content-Length, Transfer-Encoding,
 * Expect, Upgrade or Proxy-Connection, a Connection other than one field of
 * exactly "close" or "keep-alive", more than one Host, or none on HTTP/1.1,
 * and a request that ends the connection (it is not keep-alive).
 * Those all take llhttp's path, where they get their answers.
 */
#include "http_scan.h"

#include <string.h>

/* RFC 9110 tchar */
static const uint8_t tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1,
    ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1,
    ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
    ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

/* origin-target characters after the leading "/": pchar, "/", "?" (RFC 3986) */
static int target_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("-._~!$&'()*+,;=:@/?%", c) != NULL;
}

/* name[0..n) equals the lower-case `lower` ignoring ASCII case */
static int name_is(const char *name, size_t n, const char *lower)
{
    size_t i;
    if (strlen(lower) != n)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

int64_t us_http_scan(const char *data, size_t off, size_t len, size_t max_head, size_t max_target,
                     size_t max_headers)
{
    const unsigned char *p;
    size_t i, t0, tlen, nheaders = 0, hosts = 0, connections = 0, fields = 0;
    int head_method, http10, close = 0, keep = 0;

    if (off >= len)
        return 0;
    data += off;
    len -= off;
    p = (const unsigned char *)data;
    if (max_head > US_SCAN_HEAD_LEN_MASK)
        max_head = US_SCAN_HEAD_LEN_MASK;
    if (len > max_head)
        len = max_head; /* a longer head is declined: 431 comes from the other path */
    if (len >= 4 && memcmp(p, "GET ", 4) == 0) {
        head_method = 0;
        i = 4;
    } else if (len >= 5 && memcmp(p, "HEAD ", 5) == 0) {
        head_method = 1;
        i = 5;
    } else {
        return 0;
    }
    if (i >= len || p[i] != '/')
        return 0;
    t0 = i++;
    while (i < len && target_char(p[i]))
        i++;
    tlen = i - t0;
    if (tlen > max_target || tlen > 0xFFFF)
        return 0;
    if (len - i < 11 || memcmp(p + i, " HTTP/1.", 8) != 0 || (p[i + 8] != '1' && p[i + 8] != '0')
        || p[i + 9] != '\r' || p[i + 10] != '\n')
        return 0;
    http10 = p[i + 8] == '0';
    i += 11;

    for (;;) {
        size_t name, nlen, value, vlen;
        if (len - i < 2)
            return 0;
        if (p[i] == '\r') {
            if (p[i + 1] != '\n')
                return 0;
            i += 2;
            break;
        }
        name = i;
        while (i < len && tchar[p[i]])
            i++;
        nlen = i - name;
        if (nlen == 0 || i >= len || p[i] != ':')
            return 0;
        i++;
        while (i < len && (p[i] == ' ' || p[i] == '\t'))
            i++;
        value = i;
        while (i < len && ((p[i] >= 0x21 && p[i] <= 0x7E) || p[i] == ' ' || p[i] == '\t'))
            i++;
        vlen = i - value;
        if (len - i < 2 || p[i] != '\r' || p[i + 1] != '\n')
            return 0;
        if (vlen == 0 || p[i - 1] == ' ' || p[i - 1] == '\t')
            return 0; /* empty value or trailing blanks: llhttp's reading of those is its own */
        i += 2;
        if (++nheaders > max_headers)
            return 0;
        fields += nlen + vlen + 4;
        switch (nlen) {
        case 4:
            hosts += name_is(data + name, nlen, "host");
            break;
        case 6:
            if (name_is(data + name, nlen, "expect"))
                return 0;
            break;
        case 7:
            if (name_is(data + name, nlen, "upgrade"))
                return 0;
            break;
        case 10:
            if (name_is(data + name, nlen, "connection")) {
                connections++;
                if (name_is(data + value, vlen, "close"))
                    close = 1;
                else if (name_is(data + value, vlen, "keep-alive"))
                    keep = 1;
                else
                    return 0;
            }
            break;
        case 14:
            if (name_is(data + name, nlen, "content-length"))
                return 0;
            break;
        case 16:
            if (name_is(data + name, nlen, "proxy-connection"))
                return 0;
            break;
        case 17:
            if (name_is(data + name, nlen, "transfer-encoding"))
                return 0;
            break;
        default:
            break;
        }
    }
    if (hosts > 1 || (hosts == 0 && !http10) || connections > 1)
        return 0;
    /* llhttp's path also holds a head to its size as its fields tell
     * ("name: value" CRLF each, plus the target and the shortest request
     * line: parser.py's on_header and _MIN_LINE), which a head written
     * without OWS exceeds by a byte a field: such a head near the limit is
     * declined, so that both paths give it the same answer. */
    if (fields + tlen + 17 > max_head)
        return 0;
    /* A last request (HTTP/1.0 without keep-alive, or Connection: close) is
     * llhttp's: after it llhttp refuses anything but blank lines, a state the
     * caller's fresh llhttp would not be in had this call taken the head. */
    if (http10 ? !keep : close)
        return 0;
    return (int64_t)i | ((int64_t)tlen << US_SCAN_TARGET_SHIFT)
        | (head_method ? US_SCAN_HEAD_METHOD : 0) | (http10 ? US_SCAN_HTTP10 : 0) | US_SCAN_KEEP_ALIVE;
}
