/*
 * caxton.h - write Caxton agents in C (agent ABI v1, docs/agent-abi.md).
 *
 * Build (Debian: apt-get install clang lld wasi-libc):
 *   clang --target=wasm32-wasi -O2 -mexec-model=reactor -I examples/agents/include \
 *         -o agent.wasm agent.c
 *
 * In exactly one source file, define CAXTON_AGENT_MAIN before including this header: it
 * emits the exported alloc/dealloc built on malloc/free. Then define your handlers with
 * CAXTON_EXPORT:
 *
 *   #define CAXTON_AGENT_MAIN
 *   #include "caxton.h"
 *   CAXTON_EXPORT("handle_message") int handle_message(const char *msg, int len) { ... }
 *
 * The ABI version is declared by a "caxton.abi" custom section holding the byte 0x01.
 * clang 14's wasm-ld cannot emit custom sections from C, so examples/agents/build.py
 * appends it after linking (a module without it is accepted as ABI v1 anyway):
 *   printf '\x00\x0c\x0acaxton.abi\x01' >> agent.wasm
 *
 * Messages are UTF-8 JSON FIPA-ACL messages. The small JSON helpers below read the
 * top-level fields of a message and build replies without a JSON library.
 */
#ifndef CAXTON_H
#define CAXTON_H

#include <stddef.h>
#include <stdint.h>

#define CAXTON_ABI_VERSION 1

#define CAXTON_IMPORT(name) __attribute__((import_module("caxton"), import_name(name)))
#define CAXTON_EXPORT(name) __attribute__((export_name(name)))

/* Status codes returned by the host functions (negative values are errors). */
#define CAXTON_OK 0
#define CAXTON_E_INVALID (-1)   /* bad pointer/length/UTF-8/JSON or argument */
#define CAXTON_E_TOO_LARGE (-2) /* over max_message_bytes, key over 1024 bytes */
#define CAXTON_E_NOT_FOUND (-3) /* unknown key, timer or recipient */
#define CAXTON_E_DENIED (-4)    /* not allowed */
#define CAXTON_E_BUSY (-5)      /* recipient queue full: retry later */
#define CAXTON_E_INTERNAL (-6)  /* the host failed; see the node log */

/* Log levels. */
#define CAXTON_TRACE 0
#define CAXTON_DEBUG 1
#define CAXTON_INFO 2
#define CAXTON_WARN 3
#define CAXTON_ERROR 4

/* Host functions (module "caxton"). */
CAXTON_IMPORT("send") int32_t caxton_send(const void *msg, int32_t len);
CAXTON_IMPORT("reply") int32_t caxton_reply(const void *msg, int32_t len);
CAXTON_IMPORT("log") void caxton_log(int32_t level, const char *text, int32_t len);
CAXTON_IMPORT("now_us") int64_t caxton_now_us(void);
CAXTON_IMPORT("random") int32_t caxton_random(void *buf, int32_t len);
CAXTON_IMPORT("kv_store")
int32_t caxton_kv_store(const void *key, int32_t klen, const void *value, int32_t vlen);
/* Returns the value's length; writes it only when it fits in outcap (0: size query). */
CAXTON_IMPORT("kv_load")
int32_t caxton_kv_load(const void *key, int32_t klen, void *out, int32_t outcap);
CAXTON_IMPORT("kv_delete") int32_t caxton_kv_delete(const void *key, int32_t klen);
CAXTON_IMPORT("timer_set") int64_t caxton_timer_set(int64_t delay_ms, int32_t repeat);
CAXTON_IMPORT("timer_cancel") int32_t caxton_timer_cancel(int64_t timer_id);

/* ---------------------------------------------------------------------------------- */
/* Small string and JSON helpers (no libc stdio, so no WASI imports are pulled in).    */
/* ---------------------------------------------------------------------------------- */

static inline int caxton_strlen(const char *s) {
    int n = 0;
    while (s[n]) n++;
    return n;
}

static inline int caxton_mem_eq(const char *a, const char *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static inline void caxton_log_str(int level, const char *text) {
    caxton_log(level, text, caxton_strlen(text));
}

/* Index just past the JSON value starting at json[i] (json has len bytes). */
static inline int caxton_json_skip(const char *json, int len, int i) {
    if (i >= len) return len;
    char c = json[i];
    if (c == '"') {
        for (i++; i < len; i++) {
            if (json[i] == '\\') i++;
            else if (json[i] == '"') return i + 1;
        }
        return len;
    }
    if (c == '{' || c == '[') {
        int depth = 0, in_str = 0;
        for (; i < len; i++) {
            c = json[i];
            if (in_str) {
                if (c == '\\') i++;
                else if (c == '"') in_str = 0;
            } else if (c == '"') in_str = 1;
            else if (c == '{' || c == '[') depth++;
            else if ((c == '}' || c == ']') && --depth == 0) return i + 1;
        }
        return len;
    }
    while (i < len && json[i] != ',' && json[i] != '}' && json[i] != ']' &&
           json[i] != ' ' && json[i] != '\n' && json[i] != '\t' && json[i] != '\r')
        i++;
    return i;
}

static inline int caxton_json_ws(const char *json, int len, int i) {
    while (i < len && (json[i] == ' ' || json[i] == '\n' || json[i] == '\t' || json[i] == '\r'))
        i++;
    return i;
}

/* Find the raw value of key in the JSON object json[0..len). Sets *vlen; NULL if absent. */
static inline const char *caxton_json_get(const char *json, int len, const char *key,
                                          int *vlen) {
    int klen = caxton_strlen(key);
    int i = caxton_json_ws(json, len, 0);
    if (i >= len || json[i] != '{') return 0;
    i++;
    while (i < len) {
        i = caxton_json_ws(json, len, i);
        if (i >= len || json[i] == '}') return 0;
        if (json[i] == ',') { i++; continue; }
        int kstart = i + 1;
        int kend = caxton_json_skip(json, len, i) - 1; /* closing quote */
        i = caxton_json_ws(json, len, kend + 1);
        if (i < len && json[i] == ':') i++;
        i = caxton_json_ws(json, len, i);
        int vend = caxton_json_skip(json, len, i);
        if (kend - kstart == klen && caxton_mem_eq(json + kstart, key, klen)) {
            *vlen = vend - i;
            return json + i;
        }
        i = vend;
    }
    return 0;
}

/* Does the raw JSON value equal the string s (no escapes compared)? */
static inline int caxton_json_is(const char *raw, int rlen, const char *s) {
    int n = caxton_strlen(s);
    return raw && rlen == n + 2 && raw[0] == '"' && caxton_mem_eq(raw + 1, s, n);
}

/* Parse a raw JSON integer (a number or a string holding one); 0 when not a number. */
static inline long long caxton_json_int(const char *raw, int rlen) {
    long long v = 0;
    int i = 0, neg = 0;
    if (!raw) return 0;
    if (i < rlen && raw[i] == '"') i++;
    if (i < rlen && raw[i] == '-') { neg = 1; i++; }
    for (; i < rlen && raw[i] >= '0' && raw[i] <= '9'; i++) v = v * 10 + (raw[i] - '0');
    return neg ? -v : v;
}

/* Iterate an array: returns the raw element at *pos (advancing it), NULL at the end. */
static inline const char *caxton_json_next(const char *arr, int alen, int *pos, int *elen) {
    int i = *pos == 0 ? 1 : *pos;
    i = caxton_json_ws(arr, alen, i);
    if (i < alen && arr[i] == ',') i = caxton_json_ws(arr, alen, i + 1);
    if (i >= alen || arr[i] == ']') return 0;
    int end = caxton_json_skip(arr, alen, i);
    *elen = end - i;
    *pos = end;
    return arr + i;
}

/* A growable output buffer for building messages. */
typedef struct {
    char *data;
    int len;
    int cap;
} caxton_buf;

void *malloc(size_t);
void *realloc(void *, size_t);
void free(void *);

static inline void caxton_buf_raw(caxton_buf *b, const char *s, int n) {
    if (b->len + n > b->cap) {
        int cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n) cap *= 2;
        b->data = (char *)realloc(b->data, (size_t)cap);
        b->cap = cap;
    }
    for (int i = 0; i < n; i++) b->data[b->len + i] = s[i];
    b->len += n;
}

static inline void caxton_buf_str(caxton_buf *b, const char *s) {
    caxton_buf_raw(b, s, caxton_strlen(s));
}

/* Append s[0..n) as a JSON string (quotes and escapes added). */
static inline void caxton_buf_json_string(caxton_buf *b, const char *s, int n) {
    caxton_buf_raw(b, "\"", 1);
    for (int i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"' || c == '\\') { caxton_buf_raw(b, "\\", 1); caxton_buf_raw(b, &c, 1); }
        else if ((unsigned char)c < 0x20) caxton_buf_raw(b, " ", 1);
        else caxton_buf_raw(b, &c, 1);
    }
    caxton_buf_raw(b, "\"", 1);
}

static inline void caxton_buf_int(caxton_buf *b, long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? (unsigned long long)(-v) : (unsigned long long)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) tmp[n++] = '-';
    for (int i = n - 1; i >= 0; i--) caxton_buf_raw(b, &tmp[i], 1);
}

static inline void caxton_buf_free(caxton_buf *b) {
    free(b->data);
    b->data = 0;
    b->len = b->cap = 0;
}

/* ---------------------------------------------------------------------------------- */

#ifdef CAXTON_AGENT_MAIN
/* The exported allocator the host uses to hand messages to the agent. The host calls
 * dealloc once handle_message returns. */
CAXTON_EXPORT("alloc") void *caxton_alloc(int32_t len) { return malloc((size_t)(len ? len : 1)); }
CAXTON_EXPORT("dealloc") void caxton_dealloc(void *ptr, int32_t len) { (void)len; free(ptr); }
#endif

#endif /* CAXTON_H */
