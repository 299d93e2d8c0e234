/* counter: counts the messages it received in its key/value store ("count") and replies
 * to each with an `inform` whose content is {"count": N}. The count survives restarts
 * because the node keeps the agent's KV state. */
#define CAXTON_AGENT_MAIN
#include "caxton.h"

static long long load_count(void) {
    char buf[24];
    int n = caxton_kv_load("count", 5, buf, sizeof buf);
    if (n <= 0 || n > (int)sizeof buf) return 0; /* not found (-3) or not a number */
    return caxton_json_int(buf, n);
}

static void store_count(long long v) {
    caxton_buf text = {0};
    caxton_buf_int(&text, v);
    caxton_kv_store("count", 5, text.data, text.len);
    caxton_buf_free(&text);
}

CAXTON_EXPORT("handle_message") int handle_message(const char *msg, int len) {
    (void)msg;
    (void)len;
    long long count = load_count() + 1;
    store_count(count);
    caxton_buf out = {0};
    caxton_buf_str(&out, "{\"performative\":\"inform\",\"content\":{\"count\":");
    caxton_buf_int(&out, count);
    caxton_buf_str(&out, "}}");
    int status = caxton_reply(out.data, out.len);
    caxton_buf_free(&out);
    return status;
}
