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
 * Conversations: the cfps, proposals and decisions form one fipa-contract-net
 * conversation (id: the request's conversation_id + "/cnet"); the final inform or
 * failure answers the request in the request's own conversation, so the router sees
 * every message in protocol. reject-proposal goes only to bidders that proposed (a
 * refusal already ended that bidder's part).
 *
 * Its state (requester, conversations, bidders, answers, best offer) lives in its KV
 * store.
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

/* Sends {"performative": perf, "receiver": to, "conversation_id": conv, ["protocol"],
 * "content": content}; to and conv are raw JSON strings, conv may be NULL. */
static int send_to(const char *perf, const char *to, int tolen, const char *conv, int convlen,
                   int contract_net, const char *content, int clen) {
    caxton_buf out = {0};
    caxton_buf_str(&out, "{\"performative\":\"");
    caxton_buf_str(&out, perf);
    caxton_buf_str(&out, "\",\"receiver\":");
    caxton_buf_raw(&out, to, tolen);
    if (conv) {
        caxton_buf_str(&out, ",\"conversation_id\":");
        caxton_buf_raw(&out, conv, convlen);
    }
    if (contract_net) caxton_buf_str(&out, ",\"protocol\":\"fipa-contract-net\"");
    caxton_buf_str(&out, ",\"content\":");
    caxton_buf_raw(&out, content, clen);
    caxton_buf_str(&out, "}");
    int status = caxton_send(out.data, out.len);
    caxton_buf_free(&out);
    return status;
}

/* Sends to the requester, in the request's conversation. */
static int send_to_requester(const char *perf, const char *content, int clen) {
    int rlen = 0, convlen = 0;
    char *requester = kv_get("requester", &rlen);
    char *conv = kv_get("request_conv", &convlen);
    int status = CAXTON_E_NOT_FOUND;
    if (requester) status = send_to(perf, requester, rlen, conv, convlen, 0, content, clen);
    free(requester);
    free(conv);
    return status;
}

/* The key remembering that a bidder proposed: "proposed:" + its JSON name. */
static void proposed_key(caxton_buf *key, const char *name, int nlen) {
    caxton_buf_str(key, "proposed:");
    caxton_buf_raw(key, name, nlen);
}

static int start(const char *content, int clen, const char *sender, int slen,
                 const char *conv, int convlen) {
    int blen = 0, tlen = 0, budlen = 0;
    const char *bidders = content ? caxton_json_get(content, clen, "bidders", &blen) : 0;
    if (!bidders || bidders[0] != '[') return CAXTON_E_INVALID;
    const char *task = caxton_json_get(content, clen, "task", &tlen);
    const char *budget = caxton_json_get(content, clen, "budget", &budlen);

    kv_set("requester", sender, slen);
    if (conv) kv_set("request_conv", conv, convlen);
    else caxton_kv_delete("request_conv", 12);
    kv_set("bidders", bidders, blen);
    kv_set_int("received", 0);
    kv_set_int("best_price", -1);
    caxton_kv_delete("best", 4);

    /* The contract-net conversation: "<request conversation>/cnet". */
    caxton_buf cnet = {0};
    if (conv && convlen >= 2) {
        caxton_buf_raw(&cnet, conv, convlen - 1); /* without the closing quote */
        caxton_buf_str(&cnet, "/cnet\"");
    } else {
        caxton_buf_str(&cnet, "\"cnet-");
        caxton_buf_int(&cnet, caxton_now_us());
        caxton_buf_str(&cnet, "\"");
    }
    kv_set("cnet_conv", cnet.data, cnet.len);

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
        caxton_buf key = {0};
        proposed_key(&key, name, elen);
        caxton_kv_delete(key.data, key.len);
        caxton_buf_free(&key);
        send_to("cfp", name, elen, cnet.data, cnet.len, 1, cfp.data, cfp.len);
        count++;
    }
    caxton_buf_free(&cfp);
    caxton_buf_free(&cnet);
    kv_set_int("expected", count);
    return 0;
}

static void conclude(void) {
    int blen = 0, bestlen = 0, convlen = 0;
    char *best = kv_get("best", &bestlen);
    if (!best) {
        const char *failure = "{\"reason\":\"no proposals\"}";
        send_to_requester("failure", failure, caxton_strlen(failure));
        return;
    }
    char *bidders = kv_get("bidders", &blen);
    char *conv = kv_get("cnet_conv", &convlen);
    caxton_buf price = {0};
    caxton_buf_str(&price, "{\"price\":");
    caxton_buf_int(&price, kv_int("best_price", 0));
    caxton_buf_str(&price, "}");
    send_to("accept-proposal", best, bestlen, conv, convlen, 1, price.data, price.len);
    int pos = 0, elen = 0;
    const char *name;
    while (bidders && (name = caxton_json_next(bidders, blen, &pos, &elen)) != 0) {
        if (elen == bestlen && caxton_mem_eq(name, best, elen)) continue;
        caxton_buf key = {0};
        proposed_key(&key, name, elen);
        int proposed = caxton_kv_load(key.data, key.len, 0, 0) >= 0;
        caxton_buf_free(&key);
        if (proposed) send_to("reject-proposal", name, elen, conv, convlen, 1, "{}", 2);
    }
    caxton_buf_free(&price);
    free(bidders);
    free(conv);
    free(best);
}

static int collect(const char *content, int clen, const char *sender, int slen,
                   const char *conv, int convlen, int proposed) {
    long long received = kv_int("received", 0) + 1;
    kv_set_int("received", received);
    if (conv) kv_set("cnet_conv", conv, convlen); /* answer in the bidders' conversation */
    if (proposed) {
        int plen = 0;
        const char *p = content ? caxton_json_get(content, clen, "price", &plen) : 0;
        long long offer = caxton_json_int(p, plen);
        long long best = kv_int("best_price", -1);
        caxton_buf key = {0};
        proposed_key(&key, sender, slen);
        caxton_kv_store(key.data, key.len, "1", 1);
        caxton_buf_free(&key);
        if (p && (best < 0 || offer < best)) {
            kv_set_int("best_price", offer);
            kv_set("best", sender, slen);
        }
    }
    if (received == kv_int("expected", 0)) conclude();
    return 0;
}

static int finished(const char *sender, int slen) {
    caxton_buf result = {0};
    caxton_buf_str(&result, "{\"winner\":");
    caxton_buf_raw(&result, sender, slen);
    caxton_buf_str(&result, ",\"price\":");
    caxton_buf_int(&result, kv_int("best_price", 0));
    caxton_buf_str(&result, "}");
    int status = send_to_requester("inform", result.data, result.len);
    caxton_buf_free(&result);
    return status;
}

CAXTON_EXPORT("handle_message") int handle_message(const char *msg, int len) {
    int plen = 0, clen = 0, slen = 0, convlen = 0;
    const char *perf = caxton_json_get(msg, len, "performative", &plen);
    const char *content = caxton_json_get(msg, len, "content", &clen);
    const char *sender = caxton_json_get(msg, len, "sender", &slen);
    const char *conv = caxton_json_get(msg, len, "conversation_id", &convlen);
    if (conv && conv[0] != '"') conv = 0; /* null or not a string */
    if (!sender) return CAXTON_E_INVALID;
    if (caxton_json_is(perf, plen, "request"))
        return start(content, clen, sender, slen, conv, convlen);
    if (caxton_json_is(perf, plen, "propose"))
        return collect(content, clen, sender, slen, conv, convlen, 1);
    if (caxton_json_is(perf, plen, "refuse"))
        return collect(content, clen, sender, slen, conv, convlen, 0);
    if (caxton_json_is(perf, plen, "inform")) return finished(sender, slen);
    if (caxton_json_is(perf, plen, "failure")) {
        const char *failure = "{\"reason\":\"the winning bidder failed\"}";
        return send_to_requester("failure", failure, caxton_strlen(failure));
    }
    caxton_log_str(CAXTON_WARN, "initiator: ignoring an unexpected message");
    return 0;
}
