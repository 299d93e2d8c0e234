/* echo: answers every message with an `inform` carrying the same content. */
#define CAXTON_AGENT_MAIN
#include "caxton.h"

CAXTON_EXPORT("handle_message") int handle_message(const char *msg, int len) {
    int clen = 0;
    const char *content = caxton_json_get(msg, len, "content", &clen);
    caxton_buf out = {0};
    caxton_buf_str(&out, "{\"performative\":\"inform\",\"content\":");
    if (content) caxton_buf_raw(&out, content, clen);
    else caxton_buf_str(&out, "null");
    caxton_buf_str(&out, "}");
    int status = caxton_reply(out.data, out.len);
    caxton_buf_free(&out);
    return status;
}
