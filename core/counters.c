/* The counter list as data, for tools (stat, Python) that print it. */
#include <shardsock/counters.h>

static const char *const names[] = {
#define SS_X_NAME(name, desc) #name,
    SS_COUNTERS(SS_X_NAME)
#undef SS_X_NAME
};
static const char *const descs[] = {
#define SS_X_DESC(name, desc) desc,
    SS_COUNTERS(SS_X_DESC)
#undef SS_X_DESC
};

int ss_counter_count(void) { return (int)(sizeof names / sizeof names[0]); }
const char *ss_counter_name(int i) { return i >= 0 && i < ss_counter_count() ? names[i] : 0; }
const char *ss_counter_desc(int i) { return i >= 0 && i < ss_counter_count() ? descs[i] : 0; }
