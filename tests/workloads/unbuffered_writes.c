/* Skills e2e workload: writes each small record to stdout with its own write(2). Anti-pattern:
 * `unbuffered-writes`; its patch turns the write into a buffered fwrite to stdout. Built by the
 * test with `cc -g -O0 -fno-omit-frame-pointer`. Usage: `unbuffered_writes_c SECONDS > FILE`. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void emit_records(const char *rec, long count) {
    size_t len = strlen(rec);
    for (long i = 0; i < count; i++) {
        write(1, rec, len); /* HOT: one system call per record */
    }
}

int main(int argc, char **argv) {
    long secs = argc > 1 ? atol(argv[1]) : 10;
    time_t end = time(NULL) + secs;
    while (time(NULL) < end) {
        emit_records("id=42 status=ok\n", 1000);
    }
    return 0;
}
