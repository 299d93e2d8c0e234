/* initiator: the initiator of fipa-contract-net.
 *
 *   request {"bidders": ["b1", "b2", ...], "task": T, "budget": B}
 *       sends cfp {"task": T, "budget": B} to every bidder
 *   propose {"price": P} / refuse
 *       collected; when every bidder answered, accept-proposal goes to the lowest price
 *       and reject-proposal to the other proposers
 *   inform (from the winner)
 *       sends inform {"winner": NAME, "price": P} to whoever made the request
 *   no proposal at all: failure {"reason": "no proposals"} to the requester
 *
 * Its state (requester, bidders, answers, best offer) lives in its KV store.
 */
#define CAXTON_AGENT_MAIN
#include "caxton.h"

/* -- KV helpers ------------------------------------------------------------------- */

static void kv_set(const char *key, const char *value, int vlen) {
    caxton_kv_store(key, caxton_strlen(key), value, vlen);
}

/* Loads a value into a fresh buffer (malloc'd, NUL-terminated); NULL when missing. */
static char *kv_get(const char *key, int *vlen) {
    int klen = caxton_strlen(key);
    int n = caxton_kv_load(key, klen, 0, 0); /* size query */
    if (n < 0) return 0;
    char *buf = (char *)malloc((size_t)n + 1);
    caxton_kv_load(key, klen, buf, n);
    buf[n] = 0;
    *vlen = n;
    return buf;
}

static long long kv_int(const char *key, long long fallback) {
    int n = 0;
    char *v = kv_get(key, &n);
    if (!v) return fallback;
    long long r = caxton_json_int(v, n);
    free(v);
    return r;
}

static void kv_set_int(const char *key, long long value) {
    caxton_buf text = {0};
    caxton_buf_int(&text, value);
    kv_set(key, text.data, text.len);
    caxton_buf_free(&text);
}

/* -- messages ------------------------------------------------------------------------ */

/* Sends {"performative": perf, "receiver": to, "protocol": ..., "content": content}. */
static int send_to(const char *perf, const char *to, int tolen, const char *content,
                   int clen) {
    caxton_buf out = {0};
    caxton_buf_str(&out, "{\"performative\":\"");
    caxton_buf_str(&out, perf);
    caxton_buf_str(&out, "\",\"receiver\":");
    caxton_buf_raw(&out, to, tolen); /* already a JSON string */
    caxton_buf_str(&out, ",\"protocol\":\"fipa-contract-net\",\"content\":");
    caxton_buf_raw(&out, content, clen);
    caxton_buf_str(&out, "}");
    int status = caxton_send(out.data, out.len);
    caxton_buf_free(&out);
    return status;
}

static int start(const char *content, int clen, const char *sender, int slen) {
    int blen = 0, tlen = 0, budlen = 0;
    const char *bidders = content ? caxton_json_get(content, clen, "bidders", &blen) : 0;
    if (!bidders || bidders[0] != '[') return CAXTON_E_INVALID;
    const char *task = caxton_json_get(content, clen, "task", &tlen);
    const char *budget = caxton_json_get(content, clen, "budget", &budlen);

    kv_set("requester", sender, slen);
    kv_set("bidders", bidders, blen);
    kv_set_int("received", 0);
    kv_set_int("best_price", -1);
    caxton_kv_delete("best", 4);

    caxton_buf cfp = {0};
    caxton_buf_str(&cfp, "{\"task\":");
    if (task) caxton_buf_raw(&cfp, task, tlen);
    else caxton_buf_str(&cfp, "null");
    if (budget) {
        caxton_buf_str(&cfp, ",\"budget\":");
        caxton_buf_raw(&cfp, budget, budlen);
    }
    caxton_buf_str(&cfp, "}");

    int pos = 0, elen = 0, count = 0;
    const char *name;
    while ((name = caxton_json_next(bidders, blen, &pos, &elen)) != 0) {
        send_to("cfp", name, elen, cfp.data, cfp.len);
        count++;
    }
    caxton_buf_free(&cfp);
    kv_set_int("expected", count);
    return 0;
}

static void conclude(void) {
    int blen = 0, bestlen = 0, rlen = 0;
    char *best = kv_get("best", &bestlen);
    char *requester = kv_get("requester", &rlen);
    if (!best) {
        const char *failure = "{\"reason\":\"no proposals\"}";
        if (requester) send_to("failure", requester, rlen, failure, caxton_strlen(failure));
        free(requester);
        return;
    }
    char *bidders = kv_get("bidders", &blen);
    caxton_buf price = {0};
    caxton_buf_str(&price, "{\"price\":");
    caxton_buf_int(&price, kv_int("best_price", 0));
    caxton_buf_str(&price, "}");
    send_to("accept-proposal", best, bestlen, price.data, price.len);
    int pos = 0, elen = 0;
    const char *name;
    while (bidders && (name = caxton_json_next(bidders, blen, &pos, &elen)) != 0) {
        if (elen == bestlen && caxton_mem_eq(name, best, elen)) continue;
        send_to("reject-proposal", name, elen, "{}", 2);
    }
    caxton_buf_free(&price);
    free(bidders);
    free(best);
    free(requester);
}

static int collect(const char *content, int clen, const char *sender, int slen,
                   int proposed) {
    long long received = kv_int("received", 0) + 1;
    kv_set_int("received", received);
    if (proposed) {
        int plen = 0;
        const char *p = content ? caxton_json_get(content, clen, "price", &plen) : 0;
        long long offer = caxton_json_int(p, plen);
        long long best = kv_int("best_price", -1);
        if (p && (best < 0 || offer < best)) {
            kv_set_int("best_price", offer);
            kv_set("best", sender, slen);
        }
    }
    if (received == kv_int("expected", 0)) conclude();
    return 0;
}

static int finished(const char *sender, int slen) {
    int rlen = 0;
    char *requester = kv_get("requester", &rlen);
    if (!requester) return CAXTON_E_NOT_FOUND;
    caxton_buf result = {0};
    caxton_buf_str(&result, "{\"winner\":");
    caxton_buf_raw(&result, sender, slen);
    caxton_buf_str(&result, ",\"price\":");
    caxton_buf_int(&result, kv_int("best_price", 0));
    caxton_buf_str(&result, "}");
    int status = send_to("inform", requester, rlen, result.data, result.len);
    caxton_buf_free(&result);
    free(requester);
    return status;
}

CAXTON_EXPORT("handle_message") int handle_message(const char *msg, int len) {
    int plen = 0, clen = 0, slen = 0;
    const char *perf = caxton_json_get(msg, len, "performative", &plen);
    const char *content = caxton_json_get(msg, len, "content", &clen);
    const char *sender = caxton_json_get(msg, len, "sender", &slen);
    if (!sender) return CAXTON_E_INVALID;
    if (caxton_json_is(perf, plen, "request")) return start(content, clen, sender, slen);
    if (caxton_json_is(perf, plen, "propose")) return collect(content, clen, sender, slen, 1);
    if (caxton_json_is(perf, plen, "refuse")) return collect(content, clen, sender, slen, 0);
    if (caxton_json_is(perf, plen, "inform")) return finished(sender, slen);
    return CAXTON_E_INVALID;
}
