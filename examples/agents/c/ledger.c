/* ledger: records the id of every message it receives as a key of its key/value store
 * (content {"id": "..."}), logs "ledger <id> recorded by copy <copy>" and answers a
 * `request` with `inform {"id": ..., "copy": ...}` once the id is stored. `copy` is a
 * random token drawn when this instance starts (agent_init), so a client can tell two
 * instances of one agent apart: the fault campaign (tests/faults) uses it to find two
 * copies acknowledging at once, and the final store to find acknowledged ids lost. */
#define CAXTON_AGENT_MAIN
#include "caxton.h"

static char copy[17];

static void hex(const unsigned char *bytes, int n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = 0;
}

CAXTON_EXPORT("agent_init") void agent_init(void) {
    unsigned char token[8] = {0};
    caxton_random(token, sizeof token);
    hex(token, sizeof token, copy);
}

CAXTON_EXPORT("handle_message") int handle_message(const char *msg, int len) {
    int clen = 0, ilen = 0, plen = 0;
    const char *content = caxton_json_get(msg, len, "content", &clen);
    const char *id = content ? caxton_json_get(content, clen, "id", &ilen) : 0;
    if (!id || ilen < 3 || id[0] != '"') return CAXTON_E_INVALID;
    const char *key = id + 1; /* the id without its quotes */
    int klen = ilen - 2;
    int stored = caxton_kv_store(key, klen, "1", 1);
    if (stored != CAXTON_OK) return stored;

    caxton_buf line = {0};
    caxton_buf_str(&line, "ledger ");
    caxton_buf_raw(&line, key, klen);
    caxton_buf_str(&line, " recorded by copy ");
    caxton_buf_str(&line, copy);
    caxton_log(CAXTON_INFO, line.data, line.len);
    caxton_buf_free(&line);

    const char *performative = caxton_json_get(msg, len, "performative", &plen);
    if (!caxton_json_is(performative, plen, "request")) return CAXTON_OK;
    caxton_buf out = {0};
    caxton_buf_str(&out, "{\"performative\":\"inform\",\"content\":{\"id\":");
    caxton_buf_raw(&out, id, ilen);
    caxton_buf_str(&out, ",\"copy\":\"");
    caxton_buf_str(&out, copy);
    caxton_buf_str(&out, "\"}}");
    int status = caxton_reply(out.data, out.len);
    caxton_buf_free(&out);
    return status;
}
