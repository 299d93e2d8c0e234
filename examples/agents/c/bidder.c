/* bidder: the participant of fipa-contract-net.
 *
 *   inform {"price": P}   sets its price (kept in its KV store; default 100)
 *   cfp {"budget": B}     proposes {"price": P}, or refuses when P > B
 *   accept-proposal       informs {"done": true, "price": P}
 *   reject-proposal       logs it
 *   anything else         not-understood
 */
#define CAXTON_AGENT_MAIN
#include "caxton.h"

#define DEFAULT_PRICE 100

static long long price(void) {
    char buf[24];
    int n = caxton_kv_load("price", 5, buf, sizeof buf);
    if (n <= 0 || n > (int)sizeof buf) return DEFAULT_PRICE;
    return caxton_json_int(buf, n);
}

static int answer(const char *performative, const char *content_key, long long value,
                  const char *raw) {
    caxton_buf out = {0};
    caxton_buf_str(&out, "{\"performative\":\"");
    caxton_buf_str(&out, performative);
    caxton_buf_str(&out, "\",\"protocol\":\"fipa-contract-net\",\"content\":{\"");
    caxton_buf_str(&out, content_key);
    caxton_buf_str(&out, "\":");
    if (raw) caxton_buf_str(&out, raw);
    else caxton_buf_int(&out, value);
    caxton_buf_str(&out, "}}");
    int status = caxton_reply(out.data, out.len);
    caxton_buf_free(&out);
    return status;
}

CAXTON_EXPORT("handle_message") int handle_message(const char *msg, int len) {
    int plen = 0, clen = 0, vlen = 0;
    const char *perf = caxton_json_get(msg, len, "performative", &plen);
    const char *content = caxton_json_get(msg, len, "content", &clen);

    if (caxton_json_is(perf, plen, "inform")) {
        const char *p = content ? caxton_json_get(content, clen, "price", &vlen) : 0;
        if (!p) return CAXTON_E_INVALID;
        caxton_buf text = {0};
        caxton_buf_int(&text, caxton_json_int(p, vlen));
        int status = caxton_kv_store("price", 5, text.data, text.len);
        caxton_buf_free(&text);
        return status;
    }
    if (caxton_json_is(perf, plen, "cfp")) {
        long long mine = price();
        const char *budget = content ? caxton_json_get(content, clen, "budget", &vlen) : 0;
        if (budget && mine > caxton_json_int(budget, vlen))
            return answer("refuse", "reason", 0, "\"over budget\"");
        return answer("propose", "price", mine, 0);
    }
    if (caxton_json_is(perf, plen, "accept-proposal")) {
        caxton_buf extra = {0};
        caxton_buf_str(&extra, "true,\"price\":");
        caxton_buf_int(&extra, price());
        caxton_buf_raw(&extra, "", 1); /* NUL-terminate for answer() */
        int status = answer("inform", "done", 0, extra.data);
        caxton_buf_free(&extra);
        return status;
    }
    if (caxton_json_is(perf, plen, "reject-proposal")) {
        caxton_log_str(CAXTON_INFO, "bidder: proposal rejected");
        return 0;
    }
    return answer("not-understood", "reason", 0, "\"bidder understands cfp, "
                  "accept-proposal, reject-proposal and inform {price}\"");
}
